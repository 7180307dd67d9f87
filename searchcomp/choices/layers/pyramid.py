"""Pyramid depthwise-separable replacement (PydMobileNet, source 002).

Three depthwise convs with growing kernels (k, k+2, k+4: 3x3, 5x5 and 7x7 for a 3x3 conv) read
the same input; their outputs are summed and mixed by one pointwise 1x1 conv. The larger
kernels see more context for C * ((k+2)^2 + (k+4)^2) extra weights, still far below the dense
conv's D * C * k^2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from searchcomp.choices.base import Choice
from searchcomp.choices.fit import int_padding, layer_error, rank1_factors
from searchcomp.choices.registry import register

#: depthwise kernels k, k+2, ..., one per level
LEVELS = 3


class PyramidConv2d(nn.Module):
    """Depthwise convs of kernels k + 2i (i < levels) on the same input, summed, then 1x1.

    Level i pads by ``padding + i * dilation`` so every level's output has the dense conv's
    shape for every input size (same stride and dilation).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], bias: bool = False, padding_mode: str = "zeros",
                 levels: int = LEVELS) -> None:
        super().__init__()
        (kh, kw), (ph, pw), (dh, dw) = kernel_size, padding, dilation
        self.depthwise = nn.ModuleList(
            nn.Conv2d(in_channels, in_channels, (kh + 2 * i, kw + 2 * i), stride=stride,
                      padding=(ph + i * dh, pw + i * dw), dilation=dilation,
                      groups=in_channels, bias=False, padding_mode=padding_mode)
            for i in range(levels))
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.depthwise[0](x)
        for dw in self.depthwise[1:]:
            y = y + dw(x)
        return self.pointwise(y)


@register
class Pyramid(Choice):
    """``pyramid``: depthwise k, k+2 and k+4 kernels summed, then pointwise (PydMobileNet).

    Init: the k x k level holds the per-channel rank-1 SVD factors of the original kernel
    (the Frobenius-optimal separable approximation) and the larger kernels start at zero, so
    the new layer starts exactly where ``separable`` does and the fine-tune grows the context.
    """

    name = "pyramid"
    code = "P"
    short = "pyr"
    description = "depthwise k, k+2, k+4 summed + pointwise (PydMobileNet, source 002)"

    def check(self, layer: nn.Module, arg: int | None) -> str | None:
        if not isinstance(layer, nn.Conv2d):
            return f"pyramid replaces an nn.Conv2d, got {type(layer).__name__}"
        if layer.groups != 1:
            return f"pyramid needs a dense conv (groups=1); this conv has groups={layer.groups}"
        if tuple(layer.kernel_size) == (1, 1):
            return "pyramid has nothing to separate in a 1x1 conv; it is already pointwise"
        if int_padding(layer) is None:
            return f"pyramid cannot reproduce padding='same' with an even kernel " \
                   f"{tuple(layer.kernel_size)}"
        return None

    def expected_params(self, layer: nn.Module, arg: int | None) -> int:
        c, d = layer.in_channels, layer.out_channels
        kh, kw = layer.kernel_size
        taps = sum((kh + 2 * i) * (kw + 2 * i) for i in range(LEVELS))
        return c * taps + d * c + (d if layer.bias is not None else 0)

    def structure(self, layer: nn.Module, arg: int | None) -> PyramidConv2d:
        new = PyramidConv2d(layer.in_channels, layer.out_channels, tuple(layer.kernel_size),
                            tuple(layer.stride), int_padding(layer), tuple(layer.dilation),
                            bias=layer.bias is not None, padding_mode=layer.padding_mode)
        return new.to(device=layer.weight.device, dtype=layer.weight.dtype)

    def initialise(self, new: nn.Module, layer: nn.Module, arg: int | None,
                   inputs: Tensor) -> float:
        dw, pw = rank1_factors(layer.weight)
        with torch.no_grad():
            new.depthwise[0].weight.copy_(dw)
            for level in new.depthwise[1:]:
                level.weight.zero_()
            new.pointwise.weight.copy_(pw)
            if layer.bias is not None:
                new.pointwise.bias.copy_(layer.bias.detach())
        return layer_error(layer, new, inputs)
