import math

import pytest
import torch
import torchvision
from torch import nn

from searchcomp.choices.prune import prunable_convs, prune_blocks
from searchcomp.measure import count_params

X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _names(block: nn.Module, convs: list[nn.Module]) -> list[str]:
    rel = {id(m): n for n, m in block.named_modules()}
    return [rel[id(c)] for c in convs]


class TinyBlock(nn.Module):
    """Residual block with a private width (a, b) and a coupled pair (p + q) inside it."""

    def __init__(self, c: int = 8, w: int = 16) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, w, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(w)
        self.p = nn.Conv2d(w, w, 3, padding=1)
        self.q = nn.Conv2d(w, w, 1)
        self.out = nn.Conv2d(w, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn_a(self.a(x)))
        h = torch.relu(self.p(h) + self.q(h))
        return x + self.out(h)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = TinyBlock()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(torch.relu(self.stem(x)))
        return self.head(h.mean((2, 3)))


def test_bottleneck_prunable_convs_exclude_residual_and_downsample():
    m = torchvision.models.resnet50(num_classes=10).eval()
    block = m.layer1[0]
    assert _names(block, prunable_convs(m, block, X32)) == ["conv1", "conv2"]
    assert _names(m.layer2[1], prunable_convs(m, m.layer2[1], X32)) == ["conv1", "conv2"]


def test_basicblock_only_conv1():
    m = torchvision.models.resnet18(num_classes=10).eval()
    block = m.layer2[0]
    assert _names(block, prunable_convs(m, block, X32)) == ["conv1"]
    res = prune_blocks(m, {"layer2.0": 0.5}, X32)
    assert res == {"layer2.0": {"conv1": (128, 64)}}
    assert block.conv2.in_channels == 64 and block.conv2.out_channels == 128
    assert block.downsample[0].out_channels == 128
    assert m(X32).shape == (1, 10)


def test_bottleneck_halved_exact_param_drop():
    torch.manual_seed(0)
    m = torchvision.models.resnet50(num_classes=10).eval()
    before = count_params(m)
    other = {n: p.shape for n, p in m.named_parameters() if not n.startswith("layer1.0.")}
    res = prune_blocks(m, {"layer1.0": 0.5}, X32)
    b = m.layer1[0]
    assert res == {"layer1.0": {"conv1": (64, 32), "conv2": (64, 32)}}
    assert (b.conv1.out_channels, b.bn1.num_features, b.bn1.running_mean.numel()) == (32, 32, 32)
    assert (b.conv2.in_channels, b.conv2.out_channels, b.bn2.num_features) == (32, 32, 32)
    assert (b.conv3.in_channels, b.conv3.out_channels) == (32, 256)
    assert b.downsample[0].out_channels == 256
    assert {n: p.shape for n, p in m.named_parameters() if n in other} == other
    removed = (
        32 * 64 * 1 + 2 * 32          # conv1 filters, bn1
        + 64 * 64 * 9 - 32 * 32 * 9  # conv2 in and out halved
        + 2 * 32                      # bn2
        + 256 * 32 * 1                # conv3 input channels
    )
    assert count_params(m) == before - removed
    assert m(X32).shape == (1, 10)


def test_pruning_dead_channels_keeps_function():
    """Channels with the smallest L1 norm and zeroed BN are dead: removing them is exact."""
    torch.manual_seed(0)
    m = torchvision.models.resnet50(num_classes=10).eval()
    b = m.layer1[0]
    dead = torch.arange(0, 64, 2)
    with torch.no_grad():
        for conv, bn in ((b.conv1, b.bn1), (b.conv2, b.bn2)):
            conv.weight[dead] *= 1e-3
            bn.weight[dead] = 0
            bn.bias[dead] = 0
        kept = b.conv1.weight[1::2].clone()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = m(x)
    prune_blocks(m, {"layer1.0": 0.5}, X32)
    assert torch.equal(b.conv1.weight, kept)
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=1e-5, rtol=1e-4)


def test_handmade_block_with_coupled_pair():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    assert _names(net.block, prunable_convs(net, net.block, x)) == ["a", "p", "q"]
    before = count_params(net)
    res = prune_blocks(net, {"block": 0.25}, x)
    assert res == {"block": {"a": (16, 12), "p": (16, 12), "q": (16, 12)}}
    assert net.block.out.in_channels == 12
    assert net.block.out.out_channels == 8 and net.stem.out_channels == 8
    assert count_params(net) < before
    assert net(x).shape == (1, 5)


class OddBlock(nn.Module):
    """Convs feeding layers torch-pruning cannot slice exactly, and a depthwise pair."""

    def __init__(self) -> None:
        super().__init__()
        self.to_grouped = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.to_3d = nn.Conv2d(8, 8, 1)
        self.conv3d = nn.Conv3d(1, 2, (5, 3, 3), padding=(0, 1, 1))  # channel axis as depth
        self.to_dw = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.grouped(self.to_grouped(x))
        b = self.conv3d(self.to_3d(x).unsqueeze(1)).flatten(1, 2)  # 2 * (8 - 5 + 1) = 8
        c = self.pw(torch.relu(self.dw(self.to_dw(x))))
        return x + a + b + c


def test_unsliceable_consumers_are_not_prunable():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), OddBlock(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                        nn.Linear(8, 2)).eval()
    x = torch.randn(1, 3, 8, 8)
    assert _names(net[1], prunable_convs(net, net[1], x)) == ["to_dw", "dw"]
    assert prune_blocks(net, {"1": 0.5}, x) == {"1": {"to_dw": (8, 4), "dw": (8, 4)}}
    assert net[1].pw.in_channels == 4 and net(x).shape == (1, 2)


def test_ratio_zero_and_minimum_one_channel():
    net = TinyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    assert prune_blocks(net, {"block": 0.0}, x)["block"]["a"] == (16, 16)
    assert prune_blocks(net, {"block": 0.99}, x)["block"]["a"] == (16, 1)
    assert net(x).shape == (1, 5)


def test_taylor_criterion():
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # channel 3 of `a` is dead: zero Taylor score, pruned first
        net.block.bn_a.weight[3] = 0
        net.block.bn_a.bias[3] = -1
        net.block.a.weight[3] *= 10  # the largest L1 norm, so L1 would keep it
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g))
               for _ in range(2)]
    w_before = net.block.a.weight.detach().clone()
    res = prune_blocks(net, {"block": 0.5}, batches[0][0], criterion="taylor",
                       grad_batches=batches)
    assert res["block"]["a"] == (16, 8)
    kept = [i for i in range(16) if any(torch.equal(w_before[i], w) for w in net.block.a.weight)]
    assert 3 not in kept and len(kept) == 8
    assert all(p.grad is None for p in net.parameters())
    assert net(batches[0][0]).shape == (4, 5)


def test_taylor_needs_batches():
    net = TinyNet().eval()
    with pytest.raises(ValueError, match="grad_batches"):
        prune_blocks(net, {"block": 0.5}, torch.randn(1, 3, 8, 8), criterion="taylor")


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5, math.nan, "half", "0.5", True])
def test_bad_ratio_raises(ratio):
    net = TinyNet().eval()
    with pytest.raises(ValueError, match="ratio"):
        prune_blocks(net, {"block": ratio}, torch.randn(1, 3, 8, 8))


def test_unknown_block_and_criterion_raise():
    net = TinyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown block 'blok'"):
        prune_blocks(net, {"blok": 0.5}, x)
    with pytest.raises(ValueError, match="criterion"):
        prune_blocks(net, {"block": 0.5}, x, criterion="l2")


def test_round_to_keeps_multiples():
    from torchvision.models import resnet18

    from searchcomp.choices.prune import n_remove, prune_blocks

    assert n_remove(0.1, 64) == 6
    assert n_remove(0.1, 64, round_to=8) == 8  # keep 56, not 58
    assert n_remove(0.5, 64, round_to=8) == 32
    assert n_remove(0.99, 64, round_to=8) == 56  # at least round_to remain
    m = resnet18(num_classes=10)
    out = prune_blocks(m, {"layer1.0": 0.1}, torch.randn(1, 3, 32, 32), round_to={"layer1.0": 8})
    assert out["layer1.0"]["conv1"] == (64, 56)
