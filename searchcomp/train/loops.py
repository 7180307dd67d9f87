"""Training and evaluation loops shared by the base model and the candidates' fine-tunes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from searchcomp.errors import SearchcompError


class DivergedError(SearchcompError):
    """The loss became NaN or infinite: the candidate cannot be trained as configured."""


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode, restored after) on ``batches``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def train_base(model: nn.Module, batches, epochs: int, lr: float, momentum: float,
               weight_decay: float, progress: bool = True, desc: str = "train base",
               on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """SGD with momentum and a cosine schedule; returns the mean loss of each epoch."""
    from tqdm.auto import tqdm

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay, nesterov=momentum > 0)
    total = max(1, epochs * len(batches))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    losses = []
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    model.train()
    for epoch in range(epochs):
        running, n = 0.0, 0
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            if not torch.isfinite(loss):
                bar.close()
                raise DivergedError(f"{desc}: loss is {loss.item()} at epoch {epoch + 1}; "
                                    "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(y)
            n += len(y)
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{loss.item():.3f}")
        losses.append(running / max(n, 1))
        if on_epoch:
            on_epoch(epoch, losses[-1])
    bar.close()
    model.eval()
    return losses
