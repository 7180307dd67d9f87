"""Layer-replacing choices: shapes, parameter counts, gradients and init quality."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from searchcomp import choices as C
from searchcomp.choices.fit import (
    default_inputs,
    fit_local,
    layer_error,
    rank1_factors,
    relative_error,
)
from searchcomp.choices.layers.conv3d import ChannelConv3d
from searchcomp.choices.layers.meta import Meta, MetaLinear
from searchcomp.choices.layers.separable import SeparableConv2d, calibrate_bn, load_svd
from searchcomp.errors import ChoiceError


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10),
    )


def _basic_s2() -> nn.Module:
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return BasicBlock(8, 16, stride=2, downsample=down)


# name -> (model factory, attribute of the conv, input shape, conv3d arg, meta arg)
CASES = {
    "basic": (lambda: BasicBlock(16, 16), "conv2", (2, 16, 8, 8), 4, 4),
    "basic_stride2": (_basic_s2, "conv1", (2, 8, 16, 16), 4, 2),
    "bottleneck": (lambda: Bottleneck(64, 16), "conv2", (2, 64, 8, 8), 2, 2),
    "tiny_cnn": (_tiny_cnn, "0", (2, 3, 12, 12), 6, 3),
}
CONV_CHOICES = ["separable", "separable_bn", "conv3d", "meta", "pyramid"]
#: an all-zero output has relative error exactly 1; every init must do clearly better on
#: these ResNet-initialised convs (measured: 0.40..0.93)
INIT_BOUND = 0.95


def _layer_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs ``layer`` actually sees inside ``model``: realistic calibration data."""
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        model.eval()
        model(x)
        model.train()
    handle.remove()
    return seen[0]


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", CONV_CHOICES)
def test_swap_into_block(case: str, name: str) -> None:
    factory, attr, shape, conv3d_arg, meta_arg = CASES[case]
    torch.manual_seed(0)
    model = factory()
    x = torch.randn(shape)
    layer = getattr(model, attr) if not attr.isdigit() else model[int(attr)]
    t = C.get(name)
    arg = {"conv3d": conv3d_arg, "meta": meta_arg}.get(name)
    assert t.check(layer, arg) is None
    before = copy.deepcopy(layer.state_dict())
    ref_out = model(x)

    applied = t.apply(layer, arg, _layer_inputs(model, layer, x))

    # the original layer is untouched
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in layer.parameters())
    new = applied.module
    assert _n_params(new) == t.expected_params(layer, arg)
    assert 0.0 <= applied.init_error < INIT_BOUND
    assert applied.init_error == pytest.approx(
        layer_error(layer, new, _layer_inputs(model, layer, x)), rel=1e-5, abs=1e-7)

    swapped = copy.deepcopy(model)
    if attr.isdigit():
        swapped[int(attr)] = new
    else:
        setattr(swapped, attr, new)
    out = swapped(x)
    assert out.shape == ref_out.shape
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in new.parameters())
    # also at another input size: the replacement must track the original's geometry
    big = torch.randn(1, layer.in_channels, shape[2] + 5, shape[3] + 3)
    assert new(big).shape == layer(big).shape


def test_apply_is_deterministic() -> None:
    conv = BasicBlock(16, 16).conv2
    for name, arg in [("separable_bn", None), ("conv3d", 4), ("meta", 4)]:
        a, b = C.get(name).apply(conv, arg), C.get(name).apply(conv, arg)
        assert a.init_error == b.init_error
        for p, q in zip(a.module.parameters(), b.module.parameters(), strict=True):
            assert torch.equal(p, q)


def _kaiming(m: nn.Module) -> nn.Module:
    for sub in m.modules():
        if isinstance(sub, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
    return m


def test_svd_init_beats_random_on_structured_weights() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1, bias=False)
    a, b = torch.randn(16, 24), torch.randn(16, 9)
    with torch.no_grad():   # dominant rank-1 structure per input channel plus noise
        w = torch.einsum("cd,ck->dck", a, b).reshape(24, 16, 3, 3)
        conv.weight.copy_(w + 0.3 * w.std() * torch.randn_like(w))
    x = torch.randn(8, 16, 8, 8)
    svd_err = C.get("separable").apply(conv, None, x).init_error
    rand_err = layer_error(conv, _kaiming(SeparableConv2d.from_conv(conv)), x)
    assert svd_err < 0.5 * rand_err


def test_svd_init_beats_random_on_resnet_init() -> None:
    torch.manual_seed(0)
    conv = BasicBlock(16, 16).conv2
    x = torch.relu(torch.randn(8, 16, 8, 8))
    svd_err = C.get("separable").apply(conv, None, x).init_error
    rand_err = layer_error(conv, _kaiming(SeparableConv2d.from_conv(conv)), x)
    # random kernels have little rank-1 energy, so the margin is smaller than above
    assert svd_err < 0.8 * rand_err


def test_svd_exact_on_rank1_channels() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(8, 12), torch.randn(8, 9)          # a_c in R^D, b_c in R^(k*k)
    w = torch.einsum("cd,ck->dck", a, b).reshape(12, 8, 3, 3)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(w)
    applied = C.get("separable").apply(conv, None, torch.randn(4, 8, 8, 8))
    assert applied.init_error < 1e-5
    dw, pw = rank1_factors(w)
    assert dw.shape == (8, 1, 3, 3) and pw.shape == (12, 8, 1, 1)
    assert torch.allclose(pw * dw.view(1, 8, 3, 3), w, atol=1e-5)


def test_separable_bn_is_identity_before_fit() -> None:
    torch.manual_seed(0)
    conv = BasicBlock(16, 16).conv2
    x = torch.relu(torch.randn(8, 16, 8, 8))
    new = C.get("separable_bn").structure(conv, None)
    load_svd(new, conv)
    calibrate_bn(new, x)
    new.eval()
    with torch.no_grad():
        y = new.depthwise(x)
        assert torch.allclose(new.bn(y), y, atol=1e-5)        # BN in eval: the identity
        # so before any fit the layer is the plain separable conv with a ReLU in between
        plain = C.get("separable").apply(conv, None, x).module.eval()
        assert torch.allclose(new.pointwise(torch.relu(y)), new(x), atol=1e-6)
        assert not torch.allclose(new(x), plain(x), atol=1e-3)  # the ReLU does cut signal
    assert torch.allclose(new.bn.running_mean, y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert new.bn.num_batches_tracked.item() == 1
    applied = C.get("separable_bn").apply(conv, None, x)  # the local fit wins signal back
    assert applied.init_error < layer_error(conv, new, x)


def _banded(k3: torch.Tensor, channels: int) -> torch.Tensor:
    """The Conv2d weight a channel-sliding Conv3d kernel [s, 1, u, kh, kw] computes: output
    map f * n + j reads channels j .. j + u - 1 with filter f."""
    s, _, u, kh, kw = k3.shape
    n = channels - u + 1
    w = torch.zeros(s * n, channels, kh, kw)
    for f in range(s):
        for j in range(n):
            w[f * n + j, j:j + u] = k3[f, 0]
    return w


def _representable(name: str) -> tuple[nn.Conv2d, int | None]:
    """A conv the choice can reproduce exactly, and the choice's argument."""
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=True)
    with torch.no_grad():
        if name in ("separable", "pyramid"):      # rank 1 per input channel
            a, b = torch.randn(8, 12), torch.randn(8, 9)
            conv.weight.copy_(torch.einsum("cd,ck->dck", a, b).reshape(12, 8, 3, 3))
            return conv, None
        if name == "meta":                         # block diagonal, 2 groups
            conv.weight[:6, 4:] = 0
            conv.weight[6:, :4] = 0
            return conv, 2
        conv.weight.copy_(_banded(torch.randn(2, 1, 3, 3, 3), 8))  # conv3d: 2 filters
        conv.bias.copy_(torch.randn(2).repeat_interleave(6))
        return conv, 2


@pytest.mark.parametrize("name", ["separable", "pyramid", "meta", "conv3d"])
def test_init_is_exact_when_the_conv_is_representable(name: str) -> None:
    conv, arg = _representable(name)
    x = torch.randn(4, 8, 9, 9)
    applied = C.get(name).apply(conv, arg, x)
    assert applied.init_error < 1e-4
    with torch.no_grad():
        assert torch.allclose(applied.module(x), conv(x), atol=1e-3)


def test_check_rejects_undecomposable_convs() -> None:
    sep = C.get("separable")
    assert "groups=4" in sep.check(nn.Conv2d(16, 16, 3, groups=4), None)
    assert "1x1" in sep.check(nn.Conv2d(16, 32, 1), None)
    assert "groups=" in C.get("conv3d").check(nn.Conv2d(16, 16, 3, groups=2), 4)
    assert "groups=" in C.get("meta").check(nn.Conv2d(16, 16, 3, groups=2), 2)
    with pytest.raises(ChoiceError, match="1x1"):
        sep.apply(nn.Conv2d(16, 32, 1), None)


def test_check_messages_for_bad_args() -> None:
    c3 = C.get("conv3d")
    msg = c3.check(nn.Conv2d(64, 64, 3), 5)
    assert msg == "conv3d:5 needs 5 to divide the 64 output channels"
    msg = c3.check(nn.Conv2d(4, 64, 3), 8)
    assert "8" in msg and "64" in msg and "4 input channels" in msg
    assert "padding_mode" in c3.check(nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"), 4)
    with pytest.raises(ChoiceError, match="divide the 64"):
        c3.apply(nn.Conv2d(64, 64, 3), 5)
    msg = C.get("meta").check(nn.Conv2d(16, 16, 3), 3)
    assert "meta:3" in msg and "16" in msg
    msg = C.get("meta", "head").check(nn.Linear(32, 10), 5)
    assert "meta:5" in msg and "32" in msg and "10" in msg


@pytest.mark.parametrize(("in_features", "groups"), [(32, 2), (40, 5)])
def test_meta_head(in_features: int, groups: int) -> None:
    # Linear(32, 10) cannot be split in 5 groups (5 does not divide 32), hence 40 for G=5
    torch.manual_seed(0)
    head = nn.Linear(in_features, 10)
    t = C.get("meta", "head")
    assert t.check(head, groups) is None
    applied = t.apply(head, groups)
    new = applied.module
    assert isinstance(new, MetaLinear)
    assert _n_params(new) == t.expected_params(head, groups)
    x = torch.randn(6, in_features, requires_grad=True)
    out = new(x)
    assert out.shape == head(x).shape == (6, 10)
    out.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in new.parameters())
    assert new(torch.randn(2, 3, in_features)).shape == (2, 3, 10)
    assert "meta" in C.names("head") and C.get("meta_head", "head") is C.get("meta", "head")


def test_meta_block_diagonal_is_exact_for_block_diagonal_weights() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(8, 6)
    conv = nn.Conv2d(8, 6, 3, padding=1)
    with torch.no_grad():
        for w in (lin.weight, conv.weight):
            w[:3, 4:] = 0
            w[3:, :4] = 0
    assert C.get("meta", "head").apply(lin, 2).init_error < 1e-6
    assert C.get("meta").apply(conv, 2).init_error < 1e-6


def test_meta_layer_mixes_groups() -> None:
    meta = Meta(2, 2)
    x4, x2 = torch.randn(3, 4, 5, 5), torch.randn(3, 6)
    assert torch.equal(meta(x4), x4) and torch.equal(meta(x2), x2)
    with torch.no_grad():
        meta.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))   # swap the two groups
    assert torch.equal(meta(x4), torch.cat([x4[:, 2:], x4[:, :2]], 1))
    assert torch.equal(meta(x2), torch.cat([x2[:, 3:], x2[:, :3]], 1))
    assert Meta(2, 3)(x2).shape == (3, 9)


def test_pyramid_geometry_and_params() -> None:
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=2, dilation=2, bias=True)
    p = C.get("pyramid")
    new = p.apply(conv, None).module
    assert [tuple(d.kernel_size) for d in new.depthwise] == [(3, 3), (5, 5), (7, 7)]
    assert _n_params(new) == p.expected_params(conv, None) == 16 * (9 + 25 + 49) + 24 * 16 + 24
    for shape in [(2, 16, 11, 9), (1, 16, 4, 4)]:
        x = torch.randn(shape)
        assert new(x).shape == conv(x).shape
    assert all(torch.count_nonzero(d.weight) == 0 for d in new.depthwise[1:])
    assert "1x1" in p.check(nn.Conv2d(8, 8, 1), None)
    assert "groups" in p.check(nn.Conv2d(8, 8, 3, groups=2), None)


def test_channel_conv3d_geometry() -> None:
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=2, dilation=2, bias=True)
    new = ChannelConv3d.from_conv(conv, 4)          # 4 filters of depth 16 - 6 + 1 = 11
    assert tuple(new.conv.weight.shape) == (4, 1, 11, 3, 3)
    assert _n_params(new) == C.get("conv3d").expected_params(conv, 4) == 9 * 11 * 4 + 4
    x = torch.randn(2, 16, 11, 9)
    assert new(x).shape == conv(x).shape


def test_channel_conv3d_trains_through_the_equivalent_banded_conv2d() -> None:
    """With gradients on, the layer runs as a 2-D conv with the banded kernel (fast); the
    outputs and weight gradients are those of the Conv3d it computes under no_grad."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, stride=2, padding=2, dilation=2, bias=True)
    new = ChannelConv3d.from_conv(conv, 4)
    assert torch.equal(new.banded_weight().detach(), _banded(new.conv.weight.detach(), 16))
    x = torch.randn(2, 16, 11, 9)
    with torch.no_grad():
        ref = new(x)
    out = new(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad((out * ref).sum(), [new.conv.weight, new.conv.bias])
    out3 = new.conv(x.unsqueeze(1)).flatten(1, 2)
    want = torch.autograd.grad((out3 * ref).sum(), [new.conv.weight, new.conv.bias])
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_fit_local_lowers_conv3d_error() -> None:
    torch.manual_seed(0)
    conv = BasicBlock(16, 16).conv2
    x = torch.relu(torch.randn(8, 16, 8, 8))
    new = _kaiming(ChannelConv3d.from_conv(conv, 4))
    start = layer_error(conv, new, x)
    after = fit_local(new, conv, x, steps=60)
    assert after < 0.9 * start
    assert after == pytest.approx(layer_error(conv, new, x), rel=1e-6)
    # the closed-form least-squares init is already at least as good as the fit
    assert C.get("conv3d").apply(conv, 4, x).init_error <= after + 1e-6


def test_fit_local_never_worse_and_leaves_old_alone() -> None:
    torch.manual_seed(0)
    old = nn.Conv2d(4, 4, 3, padding=1)
    new = copy.deepcopy(old)
    x = torch.randn(4, 4, 8, 8)
    w = old.weight.detach().clone()
    assert fit_local(new, old, x, steps=5, lr=10.0) == 0.0       # huge lr: fit rejected
    assert torch.equal(new.weight, old.weight) and torch.equal(old.weight, w)
    assert old.weight.grad is None


def test_fit_helpers() -> None:
    ref = torch.tensor([3.0, 4.0])
    assert relative_error(ref, ref) == 0.0
    assert relative_error(ref, torch.zeros(2)) == pytest.approx(1.0)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    assert default_inputs(nn.Conv2d(5, 7, 3)).shape == (8, 5, 8, 8)
    assert default_inputs(nn.Conv2d(5, 7, 11), n=2).shape == (2, 5, 11, 11)
    assert default_inputs(nn.Linear(9, 3)).shape == (8, 9)
    assert torch.equal(default_inputs(nn.Linear(9, 3)), default_inputs(nn.Linear(9, 3)))
    with pytest.raises(TypeError):
        default_inputs(nn.ReLU())
