"""Blocks of any CNN: residual, inverted residual (MobileNet, EfficientNet, MNASNet) and plain
(VGG-style) blocks, what each allows, and the checks against pruned shapes."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from searchcomp.candidate import Recipe, build
from searchcomp.config import load_space
from searchcomp.errors import SpaceError
from searchcomp.models import build_model, find_blocks, find_head

MBV2 = """\
name: mb
model: {arch: mobilenet_v2, num_classes: 10, in_channels: 1, image_size: 16,
        kwargs: {width_mult: 0.25}}
data: {dataset: digits}
blocks:
  default: {conv: [keep, meta:4], prune: [0.0, 0.5], bits: [32, 8]}
  head: [keep, meta:2]
"""

VGG = """\
name: vgg
model: {arch: "examples.vgg.model:vgg_style", num_classes: 10, in_channels: 1, image_size: 16,
        kwargs: {width: 16, hidden: 64}}
data: {dataset: digits}
blocks:
  default: {conv: [keep, separable, meta:4], prune: [0.0, 0.3, 0.5], bits: [32, 8]}
  head_module: classifier.0
  head: [keep, meta:4]
"""


def _space(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return load_space(p)


def _arch(tmp_path, text):
    s = _space(tmp_path, text)
    m = build_model(s.model).eval()
    return s, m, find_blocks(m, s)


def test_mobilenetv2_blocks_group_pointwise_convs_and_prune_the_expansion(tmp_path):
    s, m, blocks = _arch(tmp_path, MBV2)
    assert [b.name for b in blocks] == [f"features.{i}" for i in range(1, 18)]
    assert {b.family for b in blocks} == {"inverted residual"}
    b = {b.name: b for b in blocks}
    # the depthwise conv is never a target; the expansion and the projection are
    assert b["features.3"].convs == ("features.3.conv.0.0", "features.3.conv.2")
    assert b["features.1"].convs == ("features.1.conv.1",)  # expand ratio 1: no expansion
    # residual block: only the expansion width is pruned (the depthwise conv goes with it)
    assert b["features.3"].pruning == {"features.3.conv.0.0": ("features.3.conv.2",)}
    head, _ = find_head(m, s, blocks)
    x = torch.randn(4, 1, 16, 16)
    recipe = Recipe({"features.3": {"prune": 0.5, "conv": "meta:4", "bits": 8}}, "meta:2")
    built = build(m, recipe, blocks, head, x)
    f3 = built.model.features[3].conv
    assert f3[0][0].conv.out_channels == 24 and f3[1][0].in_channels == 24  # 48 -> 24, dw too
    assert built.model(x).shape == (4, 10)
    assert 0 < built.init_errors["features.3:prune"] < 1
    assert {"features.3.conv.0.0", "features.3.conv.2", "classifier.1"} <= set(built.init_errors)


def test_a_default_that_fits_no_block_is_left_out_everywhere_a_per_block_one_refused(
        tmp_path):
    # a default list is written once for many models: separable fits none of MobileNetV2's
    # convs (1x1 or depthwise), so every block leaves it out, and says why
    s, _, blocks = _arch(tmp_path, MBV2.replace("conv: [keep, meta:4]",
                                                "conv: [keep, separable]"))
    assert all(b.values()["conv"] == ["keep"] for b in blocks)
    assert all(re.match(r"separable cannot apply to features\.\d+\..*: .*dense k x k .*dense 1x1",
                        b.dropped["separable"]) for b in blocks)
    per = MBV2.replace("  head:", "  per_block:\n    features.2: {conv: [keep, conv3d:16]}\n"
                       "  head:")
    with pytest.raises(SpaceError, match="conv3d:16 cannot apply to features.2") as e:
        _arch(tmp_path, per)
    assert e.value.field == "blocks.per_block.features.2.conv"


@pytest.mark.parametrize("arch, first, targets", [
    ("mobilenet_v3_small", "features.1", ("features.1.block.2.0",)),  # SE convs left out
    ("efficientnet_b0", "features.1.0", ("features.1.0.block.2.0",)),
    ("mnasnet0_5", "layers.8.0", ("layers.8.0.layers.0", "layers.8.0.layers.6")),
])
def test_other_inverted_residual_families(tmp_path, arch, first, targets):
    text = MBV2.replace("mobilenet_v2", arch).replace("in_channels: 1", "in_channels: 3") \
        .replace("image_size: 16", "image_size: 32").replace("kwargs: {width_mult: 0.25}", "") \
        .replace("dataset: digits", "dataset: cifar10")
    s, m, blocks = _arch(tmp_path, text)
    assert blocks[0].name == first and blocks[0].convs == targets
    assert {b.family for b in blocks} == {"inverted residual"}
    assert any(b.pruning for b in blocks)


def test_plain_cnn_every_conv_is_a_block_and_prunes_into_the_next_layer(tmp_path):
    s, m, blocks = _arch(tmp_path, VGG)
    assert [(b.name, b.family) for b in blocks] == [
        ("features.0", "plain"), ("features.3", "plain"), ("features.8", "plain")]
    b = {b.name: b for b in blocks}
    assert b["features.0"].pruning == {"features.0": ("features.3",)}
    assert b["features.8"].pruning == {"features.8": ("classifier.0",)}
    # meta:4 cannot split the 1-channel input: left out on that block only, and said why
    assert b["features.0"].values()["conv"] == ["keep", "separable"]
    assert "1 input" in b["features.0"].dropped["meta:4"]
    head, _ = find_head(m, s, blocks)
    assert head == "classifier.0"
    x = torch.randn(8, 1, 16, 16)
    # features.0 pruned by 0.3 would keep 11 of 16 filters; features.3 takes meta:4, which
    # must divide its inputs: pruning keeps a multiple of 4 (12) instead
    recipe = Recipe({"features.0": {"prune": 0.3}, "features.3": {"conv": "meta:4"},
                     "features.8": {"prune": 0.5}}, "meta:4")
    built = build(m, recipe, blocks, head, x)
    f = built.model.features
    assert f[0].out_channels == 12 and f[1].num_features == 12
    assert f[3].conv.in_channels == 12 and f[3].conv.groups == 4
    assert f[8].out_channels == 16 and built.model.classifier[0].in_features == 16 * 16
    assert built.model(x).shape == (8, 10)
    errors = built.init_errors
    assert 0 < errors["features.0:prune"] < 1 and 0 < errors["features.8:prune"] < 1
    assert built.resized["classifier.0"] == {"in": 256, "out": 64}


def test_plain_pruning_error_is_what_the_next_layer_loses(tmp_path):
    s, m, blocks = _arch(tmp_path, VGG)
    with torch.no_grad():  # filters 0..7 of features.0 output nothing: pruning them is exact
        m.features[0].weight[:8] = 0
    x = torch.randn(8, 1, 16, 16)
    built = build(m, Recipe({"features.0": {"prune": 0.5}}), blocks, "classifier.0", x)
    assert built.init_errors["features.0:prune"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(built.model(x), m(x), atol=1e-5)


def test_head_values_are_checked_against_pruned_inputs(tmp_path):
    # 30 channels x 16 pooled positions = 480 features: meta:32 divides 480, but once
    # features.8 loses 0.3 of its filters (21 x 16 = 336) it no longer does
    text = VGG.replace("width: 16", "width: 15").replace("head: [keep, meta:4]",
                                                          "head: [keep, meta:32]") \
        .replace("separable, meta:4]", "separable]")
    s, m, blocks = _arch(tmp_path, text)
    with pytest.raises(SpaceError, match=r"meta:32 cannot apply to classifier.0 when block "
                                         r"features.8 is pruned by 0.3: .* 336 input"):
        find_head(m, s, blocks)


def test_head_module_names_any_linear_and_lists_candidates(tmp_path):
    s, m, _ = _arch(tmp_path, VGG.replace("classifier.0", "classifier.9"))
    with pytest.raises(SpaceError, match=r"no module named 'classifier.9'; candidates: "
                                         r"classifier.0 Linear 512->64, classifier.3 Linear "
                                         r"64->10"):
        find_head(m, s)
    s, m, _ = _arch(tmp_path, VGG.replace("classifier.0", "features.1"))
    with pytest.raises(SpaceError, match="BatchNorm2d; the head must be"):
        find_head(m, s)


def test_meta_head_on_a_conv_classifier():
    from searchcomp import choices

    conv = nn.Conv2d(32, 10, 1)
    c = choices.get("meta", "head")
    applied = c.apply(conv, 2, torch.randn(4, 32, 5, 5))
    assert sum(p.numel() for p in applied.module.parameters()) == c.expected_params(conv, 2)
    assert applied.module(torch.randn(1, 32, 5, 5)).shape == (1, 10, 5, 5)
