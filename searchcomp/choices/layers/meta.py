"""Grouped layer plus a Meta(G, G) group mixer (source study 001).

A grouped conv/linear cuts the weights by G but stops information crossing groups; the Meta
layer restores cross-group flow with only G*G scalars, mixing whole groups of channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from searchcomp.choices.base import Choice
from searchcomp.choices.fit import fit_local
from searchcomp.choices.registry import register


class Meta(nn.Module):
    """Meta(N, M): output group m = sum_n w[n, m] * input group n, along dimension ``dim``.

    Whole channel groups are mixed with one scalar per (input group, output group) pair, so
    the cost is N*M parameters regardless of the channel count. Initialised to the identity
    (when N == M) so that inserting it changes nothing.
    """

    def __init__(self, n_in: int, n_out: int, dim: int = 1) -> None:
        super().__init__()
        self.n_in, self.n_out, self.dim = n_in, n_out, dim
        self.weight = nn.Parameter(torch.eye(n_in, n_out))

    def forward(self, x: Tensor) -> Tensor:
        dim = self.dim % x.dim()
        size = x.shape[dim]
        if size % self.n_in:
            raise ValueError(f"Meta({self.n_in}, {self.n_out}) needs dim {dim} divisible by "
                             f"{self.n_in}, got {size}")
        g = x.unflatten(dim, (self.n_in, size // self.n_in))
        last = g.dim() - 1  # non-negative dims: ONNX Transpose rejects -1 in a permutation
        g = g.movedim(dim, last)
        y = torch.matmul(g, self.weight)                   # [..., group size, M]
        return y.movedim(last, dim).flatten(dim, dim + 1)

    def extra_repr(self) -> str:
        return f"{self.n_in}, {self.n_out}, dim={self.dim}"


class MetaConv2d(nn.Module):
    """A conv with ``groups=G`` followed by Meta(G, G): D*C*k*k / G weights plus G*G."""

    def __init__(self, conv: nn.Conv2d, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                              stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                              groups=groups, bias=conv.bias is not None,
                              padding_mode=conv.padding_mode)
        self.meta = Meta(groups, groups, dim=1)
        self.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.meta(self.conv(x))


class MetaLinear(nn.Module):
    """G independent K/G -> H/G linears, one per feature slice, then Meta(G, G).

    One [G, H/G, K/G] weight and a batched matmul keep it a single kernel call instead of G
    small ones. Accepts any leading dims, like nn.Linear.
    """

    def __init__(self, in_features: int, out_features: int, groups: int,
                 bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        k, h = in_features // groups, out_features // groups
        self.weight = nn.Parameter(torch.empty(groups, h, k))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        bound = 1 / math.sqrt(k)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self.meta = Meta(groups, groups, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        g = x.unflatten(-1, (self.groups, self.in_features // self.groups))   # [..., G, K/G]
        y = torch.einsum("...gk,ghk->...gh", g, self.weight).flatten(-2)
        if self.bias is not None:
            y = y + self.bias
        return self.meta(y)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}, " \
               f"bias={self.bias is not None}"


def _block_diagonal(weight: Tensor, groups: int) -> Tensor:
    """The G diagonal blocks W[g-th out slice, g-th in slice], stacked: [G, D/G, C/G, ...]."""
    d, c = weight.shape[:2]
    dg, cg = d // groups, c // groups
    return torch.stack([weight[g * dg:(g + 1) * dg, g * cg:(g + 1) * cg]
                        for g in range(groups)])


def _divides(arg: int | None, a: int, b: int, what: str) -> str | None:
    """The reason G cannot split ``a`` inputs and ``b`` outputs, or None."""
    if arg is None or arg < 1:
        return f"meta needs a positive number of groups, e.g. 'meta:4', got {arg}"
    if a % arg or b % arg:
        return f"meta:{arg} needs {arg} to divide both the {a} input and {b} output {what}"
    return None


@register
class MetaChoice(Choice):
    """``meta:G`` on a conv: grouped conv + Meta(G, G), started from the block diagonal of the
    original weight (exact on the within-group part), then locally fitted."""

    name = "meta"
    needs_arg = True
    code = "M"
    description = "G grouped convs mixed by a Meta(G, G) layer (source 001)"
    fit_steps = 60
    #: grouping works on any dense conv: also the pointwise convs of inverted residuals
    kinds = ("spatial", "pointwise")

    def channel_multiple(self, arg: int | None) -> int:
        return arg or 1

    def check(self, layer: nn.Module, arg: int | None) -> str | None:
        if not isinstance(layer, nn.Conv2d):
            return f"meta replaces an nn.Conv2d, got {type(layer).__name__}"
        if layer.groups != 1:
            return f"meta:{arg} needs a dense conv (groups=1); this conv has " \
                   f"groups={layer.groups}"
        return _divides(arg, layer.in_channels, layer.out_channels, "channels")

    def expected_params(self, layer: nn.Module, arg: int | None) -> int:
        assert arg is not None
        kh, kw = layer.kernel_size
        d, c = layer.out_channels, layer.in_channels
        return d * (c // arg) * kh * kw + (d if layer.bias is not None else 0) + arg * arg

    def structure(self, layer: nn.Module, arg: int | None) -> MetaConv2d:
        assert arg is not None
        return MetaConv2d(layer, arg)

    def initialise(self, new: nn.Module, layer: nn.Module, arg: int | None,
                   inputs: Tensor) -> float:
        with torch.no_grad():
            new.conv.weight.copy_(_block_diagonal(layer.weight.detach(), arg).flatten(0, 1))
            if layer.bias is not None:
                new.conv.bias.copy_(layer.bias.detach())
        return fit_local(new, layer, inputs, steps=self.fit_steps)


@register
class MetaHead(Choice):
    """``meta:G`` on the classifier (source 001's meta head): G small linears on K/G features
    each + Meta(G, G), block-diagonal init, then locally fitted. A conv classifier (e.g.
    SqueezeNet's 1x1) gets the grouped conv + Meta of ``meta:G`` on convs."""

    name = "meta"
    aliases = ("meta_head",)
    target = "head"
    needs_arg = True
    code = "M"
    description = "G small linears mixed by a Meta(G, G) layer (source 001)"
    fit_steps = 60

    def channel_multiple(self, arg: int | None) -> int:
        return arg or 1

    def check(self, layer: nn.Module, arg: int | None) -> str | None:
        if isinstance(layer, nn.Conv2d):
            return MetaChoice().check(layer, arg)
        if not isinstance(layer, nn.Linear):
            return f"meta (head) replaces an nn.Linear or nn.Conv2d, got {type(layer).__name__}"
        return _divides(arg, layer.in_features, layer.out_features, "features")

    def expected_params(self, layer: nn.Module, arg: int | None) -> int:
        assert arg is not None
        if isinstance(layer, nn.Conv2d):
            return MetaChoice().expected_params(layer, arg)
        k, h = layer.in_features, layer.out_features
        return arg * (k // arg) * (h // arg) + (h if layer.bias is not None else 0) + arg * arg

    def structure(self, layer: nn.Module, arg: int | None) -> nn.Module:
        assert arg is not None
        if isinstance(layer, nn.Conv2d):
            return MetaConv2d(layer, arg)
        new = MetaLinear(layer.in_features, layer.out_features, arg, bias=layer.bias is not None)
        return new.to(device=layer.weight.device, dtype=layer.weight.dtype)

    def initialise(self, new: nn.Module, layer: nn.Module, arg: int | None,
                   inputs: Tensor) -> float:
        if isinstance(layer, nn.Conv2d):
            return MetaChoice().initialise(new, layer, arg, inputs)
        with torch.no_grad():
            new.weight.copy_(_block_diagonal(layer.weight.detach(), arg))
            if layer.bias is not None:
                new.bias.copy_(layer.bias.detach())
        return fit_local(new, layer, inputs, steps=self.fit_steps)
