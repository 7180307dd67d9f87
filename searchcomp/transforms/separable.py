"""Depthwise-separable replacement of a dense conv, initialised by a per-channel SVD."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from searchcomp.errors import ChoiceError
from searchcomp.transforms import register
from searchcomp.transforms.base import Applied, Transform
from searchcomp.transforms.fit import default_inputs, fit_local, layer_error


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


def svd_init(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Best depthwise/pointwise factors of a dense kernel, one rank-1 SVD per input channel.

    A separable conv computes W[d, c] = PW[d, c] * DW[c], i.e. each input channel's slice
    W[:, c] (D x k*k) is restricted to rank 1; the truncated SVD is the Frobenius-optimal such
    slice (Eckart-Young). sqrt(s1) goes to both factors so neither is badly scaled.
    Returns ``(dw [C, 1, kh, kw], pw [D, C, 1, 1])``.
    """
    d, c, kh, kw = weight.shape
    mats = weight.detach().permute(1, 0, 2, 3).reshape(c, d, kh * kw).double()
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    root = s[:, 0].sqrt()                                   # [C]
    pw = (u[:, :, 0] * root[:, None]).T                     # [D, C]
    dw = vh[:, 0, :] * root[:, None]                        # [C, k*k]
    return (dw.reshape(c, 1, kh, kw).to(weight.dtype),
            pw.reshape(d, c, 1, 1).to(weight.dtype).contiguous())


def _load_svd(new: SeparableConv2d, conv: nn.Conv2d) -> None:
    """Copy the SVD factors (and the original bias) of ``conv`` into ``new``."""
    dw, pw = svd_init(conv.weight)
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


class _SeparableBase(Transform):
    """Shared checks and parameter count of both separable variants."""

    with_bn: bool = False

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

    def _build(self, layer: nn.Module, arg: int | None,
               inputs: Tensor | None) -> tuple[SeparableConv2d, Tensor]:
        reason = self.check(layer, arg)
        if reason:
            raise ChoiceError(reason)
        new = SeparableConv2d.from_conv(layer, with_bn=self.with_bn)
        _load_svd(new, layer)
        new.train(layer.training)
        return new, default_inputs(layer) if inputs is None else inputs


@register
class Separable(_SeparableBase):
    """Depthwise + pointwise with no nonlinearity: the SVD init is already optimal per channel,
    so no fitting is done and the reported error is the pure factorisation error."""

    name = "separable"

    def apply(self, layer: nn.Module, arg: int | None,
              inputs: Tensor | None = None) -> Applied:
        new, x = self._build(layer, arg, inputs)
        return Applied(new, layer_error(layer, new, x))


@register
class SeparableBN(_SeparableBase):
    """MobileNet-style depthwise, BN, ReLU, pointwise: trains better than the plain variant,
    but the ReLU breaks the exact factorisation, so the SVD init is followed by a local fit."""

    name = "separable_bn"
    with_bn = True
    fit_steps = 60

    def apply(self, layer: nn.Module, arg: int | None,
              inputs: Tensor | None = None) -> Applied:
        new, x = self._build(layer, arg, inputs)
        _calibrate(new, x)
        return Applied(new, fit_local(new, layer, x, steps=self.fit_steps))


def _calibrate(new: SeparableConv2d, inputs: Tensor) -> None:
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
