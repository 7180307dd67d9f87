"""Training and evaluation loops shared by the base model and the candidates' fine-tunes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from searchcomp import console
from searchcomp.compute import Compute
from searchcomp.errors import SearchcompError

#: CPU, fp32: what a caller that names no compute gets
DEFAULT_COMPUTE = Compute()


#: steps between reads of the loss on the host (each read waits for the device)
SYNC_EVERY = 10


class DivergedError(SearchcompError):
    """The loss became NaN or infinite: the candidate cannot be trained as configured."""


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             compute: Compute | None = None) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode, restored after) on ``batches``, in
    ``compute``'s evaluation precision (fp32 unless configured otherwise)."""
    compute = compute or DEFAULT_COMPUTE
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=compute.device)
    total = 0
    try:
        for x, y in batches:
            with compute.eval_autocast():
                out = model(x)
            correct += (out.argmax(1) == y).sum()  # summed on the device: one sync at the end
            total += len(y)
    finally:
        model.train(was_training)
    return int(correct) / max(total, 1)


def train_base(model: nn.Module, batches, epochs: int, lr: float, momentum: float,
               weight_decay: float, progress: bool = True, desc: str = "base",
               on_epoch: Callable[[int, float], None] | None = None,
               compute: Compute | None = None,
               log: Callable[[str], None] | None = None) -> list[float]:
    """SGD with momentum and a cosine schedule on ``compute``'s device and precision; returns
    the mean loss of each epoch. Progress is a bar on a terminal (when ``progress``), else one
    line per epoch through ``log``."""
    compute = compute or DEFAULT_COMPUTE
    compute.train_layout(model)
    scaler = compute.grad_scaler()

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay, nesterov=momentum > 0)
    total = max(1, epochs * len(batches))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    losses = []
    bar = console.bar(total, f"{desc} training", "step", enabled=progress, leave=False)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        running = torch.zeros((), device=compute.device)
        n = 0
        for x, y in batches:
            with compute.autocast():
                out = model(compute.inputs(x))
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            running += loss.detach() * len(y)
            n += len(y)
            bar.update(1)
            if bar.n % SYNC_EVERY == 0:  # reading the loss waits for the device
                value = float(loss.detach())
                if not math.isfinite(value):
                    bar.close()
                    compute.plain_layout(model)
                    raise DivergedError(f"{desc}: loss is {value} at epoch {epoch + 1}; "
                                        "lower the learning rate")
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{value:.3f}")
        losses.append(float(running) / max(n, 1))
        if not math.isfinite(losses[-1]):
            bar.close()
            compute.plain_layout(model)
            raise DivergedError(f"{desc}: loss is {losses[-1]} at epoch {epoch + 1}; "
                                "lower the learning rate")
        if log is not None and not console.shows(bar):
            log(f"{desc}: training epoch {epoch + 1}/{epochs}, mean loss {losses[-1]:.3f}, "
                f"{time.perf_counter() - t0:.0f} s")
        if on_epoch:
            on_epoch(epoch, losses[-1])
    bar.close()
    compute.plain_layout(model)
    model.eval()
    return losses
