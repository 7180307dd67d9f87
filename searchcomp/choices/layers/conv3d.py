"""Channel-sliding 3D conv (source study 001): s small 3D filters replace D 2D filters.

Treating the channel axis as depth, each of the s filters of depth u slides over the C input
channels and yields C - u + 1 maps, so s * (C - u + 1) = D output maps cost only
s * u * kh * kw weights instead of D * C * kh * kw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from searchcomp.choices.base import Choice
from searchcomp.choices.fit import fit_local, int_padding, layer_error
from searchcomp.choices.registry import register

#: above this many unfolded input features (C*kh*kw) the exact least-squares init would need
#: a Gram matrix too large to be worth it, and the weight-space init is used instead
LS_MAX_FEATURES = 1200  # C <= 133 for 3x3 kernels; the solve grows as (C*k*k)^3


class ChannelConv3d(nn.Module):
    """One Conv3d over the (channel, height, width) volume, reshaped back to a 2D feature map.

    The bias is per 3D filter (s values), since Conv3d shares it across a filter's depth
    positions.
    """

    def __init__(self, in_channels: int, out_channels: int, filters: int,
                 kernel_size: tuple[int, int], stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1),
                 bias: bool = False) -> None:
        super().__init__()
        if out_channels % filters or out_channels // filters > in_channels:
            raise ValueError(f"{filters} filters cannot give {out_channels} maps from "
                             f"{in_channels} channels")
        self.in_channels, self.out_channels, self.filters = in_channels, out_channels, filters
        self.depth = in_channels - out_channels // filters + 1
        self.conv = nn.Conv3d(1, filters, (self.depth, *kernel_size), stride=(1, *stride),
                              padding=(0, *padding), dilation=(1, *dilation), bias=bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, filters: int) -> ChannelConv3d:
        """An uninitialised replacement with ``conv``'s geometry, device and dtype."""
        new = cls(conv.in_channels, conv.out_channels, filters, tuple(conv.kernel_size),
                  tuple(conv.stride), int_padding(conv), tuple(conv.dilation),
                  bias=conv.bias is not None)
        return new.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            # Training: the same map through an ordinary 2-D conv with the banded kernel,
            # several times faster than Conv3d here (and fast in bf16 / channels_last).
            c = self.conv
            bias = None if c.bias is None else c.bias.repeat_interleave(self.maps_per_filter)
            return F.conv2d(x, self.banded_weight(), bias, c.stride[1:], c.padding[1:],
                            c.dilation[1:])
        y = self.conv(x.unsqueeze(1))                      # [B, s, C-u+1, H', W']
        return y.flatten(1, 2)                             # [B, s*(C-u+1), H', W']

    @property
    def maps_per_filter(self) -> int:
        """n = C - u + 1: the output maps each 3-D filter yields."""
        return self.out_channels // self.filters

    def banded_weight(self) -> Tensor:
        """The equivalent Conv2d kernel [D, C, kh, kw]: output map f*n + j reads channels
        j..j+u-1 with filter f, and nothing else (zeros outside the band)."""
        k = self.conv.weight[:, 0]                         # [s, u, kh, kw]
        s, u, kh, kw = k.shape
        n = self.maps_per_filter
        dev = k.device
        rows = torch.arange(n, device=dev)[:, None]        # [n, 1]
        cols = rows + torch.arange(u, device=dev)[None]    # [n, u]: channel j + i
        f = torch.arange(s, device=dev)[:, None, None]      # [s, 1, 1]
        w = k.new_zeros(s, n, self.in_channels, kh, kw)
        w = w.index_put((f, rows[None], cols[None]), k[:, None].expand(s, n, u, kh, kw))
        return w.reshape(s * n, self.in_channels, kh, kw)


def _weight_space_init(new: ChannelConv3d, conv: nn.Conv2d) -> None:
    """Least squares in weight space (i.e. for white inputs): each filter tap is the mean of
    the original weights it stands in for, W[f*n + j, j + i] over the n depth positions j."""
    n, u = new.out_channels // new.filters, new.depth
    w = conv.weight.detach().double()                  # [D, C, kh, kw]
    w = w.view(new.filters, n, *w.shape[1:])           # [s, n, C, kh, kw]
    taps = torch.stack([w[:, j, j:j + u] for j in range(n)]).mean(0)   # [s, u, kh, kw]
    with torch.no_grad():
        new.conv.weight.copy_(taps.unsqueeze(1).to(new.conv.weight.dtype))
        if conv.bias is not None:
            b = conv.bias.detach().view(new.filters, n).mean(1)
            new.conv.bias.copy_(b)


def _data_init(new: ChannelConv3d, conv: nn.Conv2d, inputs: Tensor,
               ridge: float = 1e-6) -> None:
    """Exact least-squares fit of the outputs on ``inputs`` (the layer is linear in its
    weights, so the MSE optimum has a closed form).

    All s filters share one design matrix: the feature vector of output (j, b, l) is the
    unfolded patch of channels j..j+u-1 (plus a 1 for the bias). Its Gram matrix is a sum of
    n diagonal windows of the full C*k*k patch Gram, so nothing of size D x rows is built.
    """
    s, n, u = new.filters, new.out_channels // new.filters, new.depth
    c = conv.in_channels
    kh, kw = conv.kernel_size
    kk = kh * kw
    has_bias = conv.bias is not None
    f64 = {"dtype": torch.float64, "device": inputs.device}
    gram = torch.zeros(c, kk, c, kk, **f64)
    cross = torch.zeros(c, kk, s, n, **f64)                    # sum P[c,a] * Y[f,j]
    psum = torch.zeros(c, kk, **f64)
    ysum = torch.zeros(s, **f64)
    count = 0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], 16):
            x = inputs[start:start + 16]
            y = conv(x).double()                               # [B, D, H', W']
            p = F.unfold(x, conv.kernel_size, conv.dilation, int_padding(conv), conv.stride)
            p = p.double().view(x.shape[0], c, kk, -1)         # [B, C, kk, L]
            y = y.view(x.shape[0], s, n, -1)                   # [B, s, n, L]
            gram += torch.einsum("bcal,bdel->cade", p, p)
            cross += torch.einsum("bcal,bfjl->cafj", p, y)
            psum += p.sum(dim=(0, 3))
            ysum += y.sum(dim=(0, 2, 3))
            count += p.shape[0] * p.shape[3]
        dim = u * kk
        m = torch.zeros(dim + 1, dim + 1, **f64)
        r = torch.zeros(dim + 1, s, **f64)
        for j in range(n):
            m[:dim, :dim] += gram[j:j + u, :, j:j + u, :].reshape(dim, dim)
            m[:dim, dim] += psum[j:j + u].reshape(dim)
            r[:dim] += cross[j:j + u, :, :, j].reshape(dim, s)
        m[dim, :dim] = m[:dim, dim]
        m[dim, dim] = n * count
        r[dim] = ysum
        if not has_bias:
            m, r = m[:dim, :dim], r[:dim]
        scale = float(m.diagonal().mean().clamp_min(1e-12))
        sol = torch.linalg.solve(m + ridge * scale * torch.eye(m.shape[0], **f64), r)
        new.conv.weight.copy_(sol[:dim].T.reshape(s, 1, u, kh, kw).to(new.conv.weight.dtype))
        if has_bias:
            new.conv.bias.copy_(sol[dim])


@register
class Conv3dChoice(Choice):
    """``conv3d:s``: replace a dense conv by s channel-sliding 3D filters (source 001).

    Init is the exact least-squares solution on the calibration inputs (a weight-space
    average for very wide layers, then a short local fit that can only improve it).
    """

    name = "conv3d"
    needs_arg = True
    code = "3"
    short = "c3d"
    description = "s channel-sliding 3D filters (source 001), least-squares init"
    fit_steps = 60
    #: sliding over channels works for 1x1 filters too: the pointwise convs of inverted residuals
    kinds = ("spatial", "pointwise")

    def channel_multiple(self, arg: int | None) -> int:
        return arg or 1

    def check(self, layer: nn.Module, arg: int | None) -> str | None:
        if not isinstance(layer, nn.Conv2d):
            return f"conv3d replaces an nn.Conv2d, got {type(layer).__name__}"
        if arg is None or arg < 1:
            return f"conv3d needs a positive number of 3D filters, e.g. 'conv3d:4', got {arg}"
        c, d = layer.in_channels, layer.out_channels
        if layer.groups != 1:
            return f"conv3d:{arg} needs a dense conv (groups=1); this conv has " \
                   f"groups={layer.groups}"
        if layer.padding_mode != "zeros":
            return f"conv3d:{arg} supports only zero padding; this conv uses " \
                   f"padding_mode={layer.padding_mode!r}"
        if d % arg:
            return f"conv3d:{arg} needs {arg} to divide the {d} output channels"
        if d // arg > c:
            return (f"conv3d:{arg} gives each filter {d}/{arg} = {d // arg} output maps, more "
                    f"than the {c} input channels (filter depth {c} - {d // arg} + 1 < 1); "
                    f"use at least {-(-d // c)} filters")
        if int_padding(layer) is None:
            return f"conv3d:{arg} cannot reproduce padding='same' with an even kernel " \
                   f"{tuple(layer.kernel_size)}"
        return None

    def expected_params(self, layer: nn.Module, arg: int | None) -> int:
        assert arg is not None
        kh, kw = layer.kernel_size
        u = layer.in_channels - layer.out_channels // arg + 1
        return kh * kw * u * arg + (arg if layer.bias is not None else 0)

    def structure(self, layer: nn.Module, arg: int | None) -> ChannelConv3d:
        assert arg is not None
        return ChannelConv3d.from_conv(layer, arg)

    def initialise(self, new: nn.Module, layer: nn.Module, arg: int | None,
                   inputs: Tensor) -> float:
        if layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] <= LS_MAX_FEATURES:
            _data_init(new, layer, inputs)  # the exact optimum on the inputs: no fit improves it
            return layer_error(layer, new, inputs)
        _weight_space_init(new, layer)
        return fit_local(new, layer, inputs, steps=self.fit_steps)
