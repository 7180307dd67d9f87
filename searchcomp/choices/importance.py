"""How important each filter of a conv is: what filter pruning removes first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def l1_importance(conv: nn.Conv2d) -> torch.Tensor:
    """Li et al. (2017): the L1 norm of each filter (needs no data)."""
    return conv.weight.detach().abs().flatten(1).sum(1)


def taylor_importance(model: nn.Module, convs: Sequence[nn.Conv2d],
                      grad_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                      ) -> dict[nn.Conv2d, torch.Tensor]:
    """Molchanov et al. (2017) first-order Taylor criterion on each conv's output feature map:
    |sum over positions of activation * dLoss/dactivation|, averaged over examples.

    Gradients are taken w.r.t. the activations only (``torch.autograd.grad``), so parameter
    ``.grad`` fields and BN running stats (the model runs in eval mode) are left untouched.
    """
    acts: dict[nn.Conv2d, torch.Tensor] = {}
    hooks = [c.register_forward_hook(lambda m, i, o: acts.__setitem__(m, o)) for c in convs]
    total = {c: torch.zeros(c.out_channels) for c in convs}
    n_examples = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in grad_batches:
            acts.clear()
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)  # grads exist even with frozen params
                loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
                used = [c for c in convs if c in acts]
                grads = torch.autograd.grad(loss, [acts[c] for c in used], allow_unused=True)
            for c, g in zip(used, grads, strict=True):
                if g is not None:
                    score = (acts[c].detach() * g).flatten(2).sum(2).abs().sum(0)
                    total[c] += score.cpu().float()
            n_examples += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
        acts.clear()
        model.train(was_training)
    if n_examples == 0:
        raise ValueError("criterion='taylor' needs grad_batches: a list of (x, y) batches")
    return {c: t / n_examples for c, t in total.items()}
