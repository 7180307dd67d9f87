"""Depthwise-separable replacement of a dense conv, initialised by a per-channel SVD."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from searchcomp.choices.base import Choice
from searchcomp.choices.fit import fit_local, layer_error, rank1_factors
from searchcomp.choices.registry import register


class SeparableConv2d(nn.Module):
    """A kxk depthwise conv then a 1x1 pointwise conv, optionally with BN+ReLU between.

    It keeps the original stride, padding, dilation and padding mode on the depthwise part,
    so the output shape matches the dense conv for every input size, while the parameter
    count drops from D*C*k*k to C*k*k + D*C.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
                 bias: bool = False, padding_mode: str = "zeros", with_bn: bool = False) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   padding=padding, dilation=dilation, groups=in_channels,
                                   bias=False, padding_mode=padding_mode)
        self.bn: nn.Module = nn.BatchNorm2d(in_channels) if with_bn else nn.Identity()
        self.act: nn.Module = nn.ReLU(inplace=False) if with_bn else nn.Identity()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, with_bn: bool = False) -> SeparableConv2d:
        """An uninitialised separable conv with ``conv``'s geometry, device and dtype."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  conv.padding, conv.dilation, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, with_bn=with_bn)
        return new.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.act(self.bn(self.depthwise(x))))


def load_svd(new: SeparableConv2d, conv: nn.Conv2d) -> None:
    """Copy the SVD factors (and the original bias) of ``conv`` into ``new``."""
    dw, pw = rank1_factors(conv.weight)
    with torch.no_grad():
        new.depthwise.weight.copy_(dw)
        new.pointwise.weight.copy_(pw)
        if conv.bias is not None:
            new.pointwise.bias.copy_(conv.bias.detach())


def _reason(layer: nn.Module, name: str) -> str | None:
    """Why ``layer`` has nothing to separate, or None."""
    if not isinstance(layer, nn.Conv2d):
        return f"{name} replaces an nn.Conv2d, got {type(layer).__name__}"
    if layer.groups != 1:
        return (f"{name} needs a dense conv (groups=1); this conv has groups={layer.groups}, "
                "it is already grouped/depthwise")
    if tuple(layer.kernel_size) == (1, 1):
        return f"{name} has nothing to separate in a 1x1 conv ({layer.in_channels}->" \
               f"{layer.out_channels}); it is already pointwise"
    return None


@register
class Separable(Choice):
    """``separable``: depthwise k x k + pointwise 1x1 with no nonlinearity between (source
    000's swap). The per-channel SVD init is already the optimum, so no fitting is done and
    the reported error is the pure factorisation error."""

    name = "separable"
    code = "S"
    short = "sep"
    description = "depthwise k x k + pointwise 1x1, SVD init"
    #: the choice the greedy baseline of source 000 swaps in, block by block
    greedy_swap = True
    with_bn = False

    def check(self, layer: nn.Module, arg: int | None) -> str | None:
        return _reason(layer, self.name)

    def expected_params(self, layer: nn.Module, arg: int | None) -> int:
        c, d = layer.in_channels, layer.out_channels
        kh, kw = layer.kernel_size
        n = c * kh * kw + d * c
        if layer.bias is not None:
            n += d
        if self.with_bn:
            n += 2 * c
        return n

    def structure(self, layer: nn.Module, arg: int | None) -> SeparableConv2d:
        return SeparableConv2d.from_conv(layer, with_bn=self.with_bn)

    def initialise(self, new: nn.Module, layer: nn.Module, arg: int | None,
                   inputs: Tensor) -> float:
        load_svd(new, layer)
        return layer_error(layer, new, inputs)


@register
class SeparableBN(Separable):
    """``separable_bn``: MobileNet-style depthwise, BN, ReLU, pointwise. Trains better than
    the plain variant, but the ReLU breaks the exact factorisation, so the SVD init is
    followed by a local fit."""

    name = "separable_bn"
    code = "B"
    short = "sep_bn"
    description = "depthwise + BN + ReLU + pointwise, SVD init then a local fit"
    greedy_swap = False
    with_bn = True
    fit_steps = 60

    def initialise(self, new: nn.Module, layer: nn.Module, arg: int | None,
                   inputs: Tensor) -> float:
        load_svd(new, layer)
        calibrate_bn(new, inputs)
        return fit_local(new, layer, inputs, steps=self.fit_steps)


def calibrate_bn(new: SeparableConv2d, inputs: Tensor) -> None:
    """Make the BN an identity at inference while holding real DW-output statistics.

    Running mean/var come from the depthwise outputs on ``inputs`` (so switching to train
    mode later does not shock the layer), and gamma = sqrt(var + eps), beta = mean undo the
    normalisation exactly. Each channel's SVD sign pair (u, v) -> (-u, -v) is also chosen so
    the depthwise output has a non-negative mean, letting more signal through the ReLU.
    """
    bn = new.bn
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        y = new.depthwise(inputs)
        sign = torch.where(y.mean(dim=(0, 2, 3)) < 0, -1.0, 1.0).to(y.dtype)
        new.depthwise.weight.mul_(sign.view(-1, 1, 1, 1))
        new.pointwise.weight.mul_(sign.view(1, -1, 1, 1))
        y = y * sign.view(1, -1, 1, 1)
        mean = y.mean(dim=(0, 2, 3))
        var = y.var(dim=(0, 2, 3), unbiased=False)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.fill_(1)
        bn.weight.copy_((var + bn.eps).sqrt())
        bn.bias.copy_(mean)
