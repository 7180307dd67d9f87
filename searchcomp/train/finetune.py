"""The short fine-tune a candidate gets, by default distilled from the base network."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from searchcomp.compute import Compute
from searchcomp.config import FinetuneConfig
from searchcomp.data import Batches
from searchcomp.train.distill import distill_loss, teacher_outputs
from searchcomp.train.loops import DEFAULT_COMPUTE, SYNC_EVERY, DivergedError, evaluate


class BelowFloor(Exception):
    """The candidate's validation accuracy part-way through is below ``min_accuracy``."""

    def __init__(self, accuracy: float, step: int, floor: float) -> None:
        super().__init__(f"validation accuracy {accuracy:.4f} < floor {floor:.4f} "
                         f"after {step} fine-tune steps")
        self.accuracy, self.step, self.floor = accuracy, step, floor


@dataclass
class FinetuneResult:
    """What the fine-tune did."""

    steps: int
    seconds: float
    final_loss: float
    #: validation accuracy at the early-stop check, if one ran
    checked_accuracy: float | None = None


def total_steps(cfg: FinetuneConfig, batches: Batches) -> int:
    """Optimizer steps of one fine-tune: ``steps``, or ``epochs`` passes over the data."""
    return cfg.steps if cfg.steps else max(1, math.ceil(cfg.epochs * len(batches)))


def _optimizer(cfg: FinetuneConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True)
    if cfg.optimizer == "rmsprop":  # the greedy source's choice (centered RMSprop)
        return torch.optim.RMSprop(params, lr=cfg.lr, centered=True)
    return torch.optim.Adam(params, lr=cfg.lr)


def lr_factor(cfg: FinetuneConfig, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: a linear warm-up over ``cfg.warmup`` of the
    ``total`` steps, then constant or a cosine decay to 0 (``cfg.schedule``)."""
    warm = int(round(cfg.warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "cosine":
            rest = max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(step - warm, rest) / rest))
        return 1.0

    return factor


def train_mode(model: nn.Module, cfg: FinetuneConfig) -> None:
    """Training mode, with the BatchNorm layers kept in eval mode when ``cfg.bn`` is
    ``frozen``: they normalise with the running statistics and do not update them (a short
    fine-tune on small batches would otherwise replace well-estimated statistics)."""
    model.train()
    if cfg.bn == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def finetune(model: nn.Module, teacher: nn.Module | None, train: Batches, val: Batches,
             cfg: FinetuneConfig, *,
             on_step: Callable[[int, int, float | None], None] | None = None,
             compute: Compute | None = None, teacher_logits: torch.Tensor | None = None,
             ) -> FinetuneResult:
    """Fine-tune ``model`` in place for :func:`total_steps` steps, on ``compute``'s device
    and precision (autocast; a gradient scaler for fp16; the model is handed back in the
    plain NCHW layout whatever layout it trained in).

    With ``cfg.loss == "distill"`` the frozen ``teacher`` (the base) supplies soft targets:
    from ``teacher_logits`` (row i for image i of ``train``, see
    :func:`~searchcomp.train.distill.teacher_logits`) when given, else from a teacher forward
    per step. If ``cfg.min_accuracy`` is set, validation accuracy is checked after
    ``cfg.check_at`` of the steps and :class:`BelowFloor` is raised when it is lower. A NaN or
    infinite loss raises :class:`~searchcomp.train.DivergedError` (checked every
    :data:`~searchcomp.train.loops.SYNC_EVERY` steps, since reading the loss waits for the
    device). ``on_step(step, total, loss)`` reports progress with the last loss read (None
    before the first read).
    """
    compute = compute or DEFAULT_COMPUTE
    n = total_steps(cfg, train)
    check_step = max(1, int(n * cfg.check_at)) if cfg.min_accuracy is not None else -1
    use_teacher = cfg.loss == "distill" and (teacher is not None or teacher_logits is not None)
    if teacher_logits is not None and len(teacher_logits) != train.size:
        raise ValueError(f"teacher_logits has {len(teacher_logits)} rows for the "
                         f"{train.size} fine-tune images: they must be computed on them")
    if use_teacher and teacher_logits is None:
        teacher.eval()
    compute.train_layout(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(cfg, params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, n))
    scaler = compute.grad_scaler()
    alpha, temperature = cfg.distill.alpha, cfg.distill.temperature
    train_mode(model, cfg)
    t0 = time.perf_counter()
    step, loss_value, checked = 0, float("nan"), None
    read: float | None = None  # what on_step shows: None until a loss has been read
    try:
        while step < n:
            for idx, x, y in train.indexed():
                with compute.autocast():
                    out = model(compute.inputs(x)).float()
                if not use_teacher:
                    loss = F.cross_entropy(out, y)
                else:
                    if teacher_logits is not None:
                        t_out = teacher_logits[idx.to(teacher_logits.device)]
                    else:
                        t_out = teacher_outputs(teacher, x, compute)
                    loss = distill_loss(out, t_out, y, alpha, temperature)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                if step % SYNC_EVERY == 0 or step == n or step == check_step:
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise DivergedError(f"fine-tune loss is {loss_value} at step {step}; "
                                            "lower finetune.lr")
                    read = loss_value
                if on_step:
                    on_step(step, n, read)
                if step == check_step:
                    checked = evaluate(model, val, compute)
                    if checked < cfg.min_accuracy:
                        raise BelowFloor(checked, step, cfg.min_accuracy)
                    train_mode(model, cfg)
                if step >= n:
                    break
    finally:
        compute.plain_layout(model)
        model.eval()
    return FinetuneResult(step, time.perf_counter() - t0, loss_value, checked)
