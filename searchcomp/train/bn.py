"""BatchNorm statistics re-estimated without a gradient step: what a candidate is scored after
at the cheapest fidelity (a rung-0 score, as OFA, ModelOpt FastNAS and NNCF score
sub-networks).

Pruning and replacing layers change the activations every later BatchNorm sees, while their
running statistics still describe the base's; a forward pass over a few training batches in
training mode, with a cumulative average (``momentum=None``), replaces them. No weight moves.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from searchcomp.compute import Compute
from searchcomp.train.loops import DEFAULT_COMPUTE

_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  n_batches: int, compute: Compute | None = None) -> int:
    """Replace the running mean and variance of every BatchNorm of ``model`` by their average
    over the first ``n_batches`` of ``batches`` (in eval mode otherwise, so nothing but
    BatchNorm changes; each layer's momentum is restored). Returns how many batches ran."""
    compute = compute or DEFAULT_COMPUTE
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    ran = 0
    try:
        for x, _ in batches:
            if ran >= n_batches:
                break
            with compute.eval_autocast():
                model(x)
            ran += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return ran
