"""A tiny residual network for the int8 tests: a float stem and head around two
torchvision BasicBlocks (8 -> 8, then 8 -> 16 with a downsample)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from searchcomp.choices.actquant import calibrate_activations, simulate_int8
from searchcomp.choices.quant import quantize_module


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2), nn.BatchNorm2d(16))
        self.blocks = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2,
                                                                 downsample=down))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def residual(bits: tuple[int, int] = (8, 4), int8: bool = True, seed: int = 0,
             scheme: str | None = None) -> tuple[nn.Module, torch.Tensor]:
    """``Residual`` with BatchNorm statistics set (positive gains), block i quantized to
    ``bits[i]`` (32 = float), blocks at <= 8 bits simulating int8 (with ``scheme``, default
    u8s8) and calibrated when ``int8``; and its calibration images (3 x 16 x 16)."""
    torch.manual_seed(seed)
    m = Residual().eval()
    for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    for block, b in zip(m.blocks, bits, strict=True):
        quantize_module(block, b)
        if int8 and b <= 8:
            simulate_int8(block, scheme)
    calib = torch.randn(48, 3, 16, 16)
    calibrate_activations(m, calib)
    return m, calib
