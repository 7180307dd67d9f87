"""The short fine-tune a candidate gets, by default distilled from the base network."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from searchcomp.config import FinetuneConfig
from searchcomp.data import Batches
from searchcomp.train.distill import distill_loss
from searchcomp.train.loops import DivergedError, evaluate


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


def finetune(model: nn.Module, teacher: nn.Module | None, train: Batches, val: Batches,
             cfg: FinetuneConfig, *, on_step: Callable[[int, int, float], None] | None = None,
             ) -> FinetuneResult:
    """Fine-tune ``model`` in place for :func:`total_steps` steps.

    With ``cfg.loss == "distill"`` the frozen ``teacher`` (the base) supplies soft targets.
    If ``cfg.min_accuracy`` is set, validation accuracy is checked after ``cfg.check_at`` of
    the steps and :class:`BelowFloor` is raised when it is lower. A NaN or infinite loss
    raises :class:`~searchcomp.train.DivergedError`. ``on_step(step, total, loss)`` reports
    progress.
    """
    n = total_steps(cfg, train)
    check_step = max(1, int(n * cfg.check_at)) if cfg.min_accuracy is not None else -1
    use_teacher = cfg.loss == "distill" and teacher is not None
    if use_teacher:
        teacher.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(cfg, params)
    model.train()
    t0 = time.perf_counter()
    step, loss_value, checked = 0, float("nan"), None
    while step < n:
        for x, y in train:
            out = model(x)
            if use_teacher:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = distill_loss(out, t_out, y, cfg.distill.alpha, cfg.distill.temperature)
            else:
                loss = F.cross_entropy(out, y)
            if not torch.isfinite(loss):
                raise DivergedError(f"fine-tune loss is {loss.item()} at step {step + 1}; "
                                    "lower finetune.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_value = float(loss.item())
            if on_step:
                on_step(step, n, loss_value)
            if step == check_step:
                checked = evaluate(model, val)
                if checked < cfg.min_accuracy:
                    model.eval()
                    raise BelowFloor(checked, step, cfg.min_accuracy)
                model.train()
            if step >= n:
                break
    model.eval()
    return FinetuneResult(step, time.perf_counter() - t0, loss_value, checked)
