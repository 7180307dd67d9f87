"""Finding blocks, their conv layers and the values each may take."""

from __future__ import annotations

import pytest

from searchcomp.config import load_space
from searchcomp.errors import SpaceError
from searchcomp.models import build_model, find_blocks, find_head, space_size

from .conftest import TINY_SPACE


def _space(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return load_space(p)


def test_resnet18_blocks_and_convs(tmp_path):
    s = _space(tmp_path, TINY_SPACE)
    m = build_model(s.model)
    blocks = find_blocks(m, s)
    assert [b.name for b in blocks] == [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert blocks[0].convs == ("layer1.0.conv1", "layer1.0.conv2")
    assert blocks[0].values() == {"conv": ["keep", "separable", "meta:4"], "prune": [0.0, 0.5],
                                  "bits": [32, 8], "width": [0.0]}  # width: none given
    assert find_head(m, s)[0] == "fc"
    assert space_size(blocks, s.blocks.head) == (3 * 2 * 2) ** 8 * 2


def test_resnet50_has_16_bottlenecks_with_conv2(tmp_path):
    s = _space(tmp_path, TINY_SPACE.replace("resnet18", "resnet50"))
    blocks = find_blocks(build_model(s.model), s)
    assert len(blocks) == 16
    assert all(b.convs == (f"{b.name}.conv2",) for b in blocks)


def test_per_block_overrides_merge_and_unset_choices_are_neutral(tmp_path):
    text = TINY_SPACE.replace("    bits: [32, 8]\n", "").replace(
        "  head: [keep, meta:2]",
        "  per_block:\n    'layer4.*': {prune: [0.0]}\n  head: [keep, meta:2]")
    s = _space(tmp_path, text)
    blocks = {b.name: b for b in find_blocks(build_model(s.model), s)}
    assert blocks["layer4.1"].values()["prune"] == [0.0]
    assert blocks["layer1.0"].values()["prune"] == [0.0, 0.5]
    assert blocks["layer1.0"].values()["bits"] == [32]
    assert blocks["layer4.1"].origin["prune"] == "blocks.per_block.layer4.*.prune"


def test_glob_selection_on_a_factory_model(tmp_path):
    text = TINY_SPACE.replace("arch: resnet18", "arch: tests.tiny_factory:tiny_cnn").replace(
        "  default:", "  select: ['0', '1']\n  per_block:\n    '0': {conv: [keep]}\n  default:"
    ).replace("meta:4]", "meta:8]")
    s = _space(tmp_path, text)
    m = build_model(s.model)
    blocks = find_blocks(m, s)
    assert [b.name for b in blocks] == ["0", "1"]
    assert blocks[1].convs == ("1.0",)
    # a plain CNN: a block's filters go with the next layer's inputs (the next block's conv,
    # then the classifier after the pooling)
    assert blocks[0].pruning == {"0.0": ("1.0",)} and blocks[1].pruning == {"1.0": ("4",)}
    assert find_head(m, s, blocks)[0] == "4"
    # meta:8 cannot split the 1-channel input of block 0: asked for there, it is an error
    bad = _space(tmp_path, text.replace("'0': {conv: [keep]}", "'0': {conv: [keep, meta:8]}"))
    with pytest.raises(SpaceError, match="meta:8 cannot apply to 0.0: .*1 input"):
        find_blocks(build_model(bad.model), bad)


def test_auto_on_a_plain_cnn_makes_every_conv_a_block(tmp_path):
    s = _space(tmp_path, TINY_SPACE.replace("arch: resnet18", "arch: tests.tiny_factory:tiny_cnn"))
    blocks = find_blocks(build_model(s.model), s)
    assert [(b.name, b.family) for b in blocks] == [("0", "plain"), ("1", "plain")]
    # meta:4 cannot split block 0's one input channel: left out there, kept on block 1
    assert blocks[0].values()["conv"] == ["keep", "separable"]
    assert blocks[1].values()["conv"] == ["keep", "separable", "meta:4"]


def test_conv_choices_are_checked_against_pruned_shapes(tmp_path):
    # BasicBlock conv2 keeps 64 outputs but its input shrinks with conv1: conv3d:2 needs
    # D/s = 32 <= C, which fails once 0.75 of conv1's 64 filters are gone (C = 16)
    text = TINY_SPACE.replace("conv: [keep, separable, meta:4]", "conv: [keep, conv3d:2]")
    s = _space(tmp_path, text.replace("prune: [0.0, 0.5]", "prune: [0.0, 0.75]"))
    blocks = find_blocks(build_model(s.model), s)  # a default: left out where it cannot apply
    why = blocks[0].dropped["conv3d:2"]
    assert why.startswith("conv3d:2 cannot apply to layer1.0.conv2 when the block is pruned "
                          "by 0.75")
    assert blocks[0].values()["conv"] == ["keep"]
    per = _space(tmp_path, text.replace("prune: [0.0, 0.5]", "prune: [0.0, 0.75]").replace(
        "  head:", "  per_block:\n    layer1.0: {conv: [keep, conv3d:2]}\n  head:"))
    with pytest.raises(SpaceError, match=r"conv3d:2 cannot apply to layer1.0.conv2 when the "
                                         r"block is pruned by 0.75") as e:
        find_blocks(build_model(per.model), per)  # asked for on that block: refused
    assert e.value.field == "blocks.per_block.layer1.0.conv"
    ok = _space(tmp_path, text)  # at 0.5, C = 32 = D/s: fine
    assert all("conv3d:2" in b.values()["conv"] for b in find_blocks(build_model(ok.model), ok))
