"""What layers and blocks receive and return on calibration images, and the relative output
error a change leaves: what every axis reports right after it is applied.

A block whose input is a list of maps (a DenseNet layer concatenates the maps of every layer
before it) is given, and called with, their concatenation along channels, which it accepts
as well; so its input has one shape like any other block's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from searchcomp.choices.fit import relative_error

#: images used to report the output error that pruning and quantization leave in a block
ERROR_IMAGES = 16


def first_input(args: tuple) -> torch.Tensor:
    """The tensor a module is called with: its first argument, a list of maps concatenated."""
    x = args[0]
    if isinstance(x, (list, tuple)):
        return torch.cat(list(x), 1)
    return x


@torch.no_grad()
def capture_inputs(model: nn.Module, x: torch.Tensor, names: list[str]
                   ) -> dict[str, torch.Tensor]:
    """The inputs each named layer receives when ``model`` runs on ``x``."""
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for n in names:
        def hook(_m, args, n=n):
            got[n] = first_input(args).detach().clone()
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        model.eval()
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


@torch.no_grad()
def block_io(model: nn.Module, x: torch.Tensor, names: list[str]
             ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each named block's (input, output) when ``model`` runs on ``x``."""
    inputs = capture_inputs(model, x, names)
    return {n: (inputs[n], model.get_submodule(n)(inputs[n])) for n in names}


@torch.no_grad()
def block_errors(model: nn.Module, before: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 what: str) -> dict[str, float]:
    """Relative output error of each changed block on the same inputs as before the change,
    keyed ``<block>:<what>`` (a block's pruning or quantization, isolated from the others)."""
    model.eval()
    return {f"{n}:{what}": relative_error(ref, model.get_submodule(n)(x))
            for n, (x, ref) in before.items()}


@torch.no_grad()
def prune_errors(model: nn.Module, before: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 removed: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Relative output error of each pruned block on the same inputs as before, keyed
    ``<block>:prune``. A plain CNN's block also loses output channels and inputs (the previous
    block's pruned filters): the lost inputs are dropped from the same inputs, and the lost
    outputs count as zeros, so the error is what the next layer no longer receives."""
    model.eval()
    out = {}
    for n, (x, ref) in before.items():
        inside = {k: v for k, v in removed.items() if k == n or k.startswith(n + ".")}
        gone_in = next((v["in"] for v in inside.values()
                        if "in" in v and not all(src.startswith(n + ".") or src == n
                                                 for src in v["in_from"])), [])
        if gone_in:
            x = x[:, [i for i in range(x.shape[1]) if i not in set(gone_in)]]
        try:
            y = model.get_submodule(n)(x)
        except RuntimeError:
            continue  # inputs that do not map back: no figure rather than a wrong one
        if y.shape != ref.shape:
            # the block's output lost channels: the removed outputs of a layer of its own
            # (a DenseNet layer's inputs lose channels too: those indices run past its output)
            gone_out = next((v["out"] for v in reversed(list(inside.values())) if "out" in v
                             and len(v["out"]) == ref.shape[1] - y.shape[1]
                             and max(v["out"], default=0) < ref.shape[1]), None)
            if gone_out is None:
                continue  # cannot tell which channels went: no figure rather than a wrong one
            full = torch.zeros_like(ref)
            full[:, [i for i in range(ref.shape[1]) if i not in set(gone_out)]] = y
            y = full
        out[f"{n}:prune"] = relative_error(ref, y)
    return out


def layer_sizes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The channel sizes of every Conv2d, BatchNorm and Linear of ``model``, by name."""
    out: dict[str, dict[str, int]] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[n] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[n] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[n] = {"in": m.in_features, "out": m.out_features}
    return out
