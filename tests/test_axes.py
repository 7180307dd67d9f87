"""The choice axes as registered objects (one contract for all), and the ``width`` axis that
proves it: a stage's residual channels, coupled through torch-pruning's dependency graph,
built for real, costed from shapes exactly, timed by the latency table, in every command's
vocabulary (summary, inspect, profile rows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchcomp.candidate import Recipe, build, legend, shown_axes
from searchcomp.choices import axes
from searchcomp.config import load_space
from searchcomp.errors import SpaceError
from searchcomp.measure import count_flops, count_params
from searchcomp.models import build_model, find_blocks, find_head, input_shape
from searchcomp.predict.costs import ShapeCosts
from searchcomp.predict.latency import LatencyTable
from searchcomp.predict.layout import Layout
from searchcomp.predict.sensitivity import wanted_rows

SPACE = """\
name: axes
model: {{arch: {arch}, num_classes: 10, in_channels: 1, image_size: 8{kwargs}}}
data: {{dataset: digits, train_size: 100, val_size: 50, test_size: 50}}
blocks:
  default: {{conv: [keep, separable, meta:4], prune: [0.0, 0.5], bits: [32, 8],
            width: [0.0, 0.25, 0.5]}}
  head: [keep, meta:2]
{extra}measure: {{runs: 30, warmup: 1}}
studies_dir: {studies}
"""


def _setup(tmp_path, arch="resnet18", kwargs="", extra=""):
    p = tmp_path / "s.yaml"
    p.write_text(SPACE.format(arch=arch, kwargs=kwargs, extra=extra,
                              studies=tmp_path / "studies"))
    space = load_space(p)
    model = build_model(space.model).eval()
    blocks = find_blocks(model, space)
    head, _ = find_head(model, space, blocks)
    return space, model, blocks, head


@pytest.mark.parametrize("axis", axes.all_axes(), ids=lambda a: a.name)
def test_every_axis_keeps_the_contract(axis):
    assert axis.phase in axes.PHASES and axis.name not in ("head", "")
    assert axis.parse(axis.neutral) == axis.neutral
    assert axis.code(axis.neutral) == "." and axis.legend() and axis.description
    assert axes.get(axis.name) is axis and axes.neutral(axis.name) == axis.neutral
    with pytest.raises(ValueError):
        axis.parse({"not": "a value"})
    assert axis.latency_key(axis.neutral, "torch") == axis.neutral


def test_the_built_in_axes_are_registered_in_order():
    assert axes.names()[:4] == ["conv", "prune", "bits", "width"]
    assert [a.name for a in axes.shown()] == ["conv", "prune", "bits"]  # width when used
    assert [a.name for a in axes.in_phase("resize")] == ["prune", "width"]


def test_a_stage_is_the_blocks_whose_outputs_meet_at_the_same_adds(tmp_path):
    space, model, blocks, head = _setup(tmp_path)
    by = {b.name: b for b in blocks}
    owners = [b.name for b in blocks if len(b.allowed("width")) > 1]
    assert owners == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    st = by["layer1.0"].info["width"]
    assert st["root"] == "conv1" and st["channels"] == 64  # the stem feeds layer1's adds
    assert st["blocks"] == ["layer1.0", "layer1.1"]
    members = {m for m, _k, _p in st["members"]}
    # the stem, both blocks' second convs, and the next stage's first conv and downsample
    assert {"conv1", "bn1", "layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv1",
            "layer2.0.downsample.0"} <= members
    assert "fc" in {m for m, _k, _p in by["layer4.0"].info["width"]["members"]}
    # the others take no value of their own, and inspect says why
    assert by["layer1.1"].allowed("width") == (0.0,)
    assert "chosen on its first block, layer1.0" in by["layer1.1"].dropped["width 0.25"]
    assert shown_axes(blocks) == ["conv", "prune", "bits", "width"]
    assert "width digit = tenths of the stage's residual channels" in legend(shown_axes(blocks))


def test_width_on_a_block_that_owns_no_stage_is_refused_at_its_line(tmp_path):
    with pytest.raises(SpaceError, match="chosen on its first block, layer2.0") as e:
        _setup(tmp_path, extra="  per_block:\n    layer2.1: {width: [0.0, 0.5]}\n")
    assert e.value.field == "blocks.per_block.layer2.1.width" and e.value.line == 9


def test_width_builds_costs_and_times_for_real(tmp_path):
    space, model, blocks, head = _setup(tmp_path)
    shape = input_shape(space.model)
    x = torch.randn(4, *shape)
    recipe = Recipe({"layer1.0": {"width": 0.25, "prune": 0.5, "conv": "meta:4"},
                     "layer2.0": {"width": 0.5, "bits": 8}, "layer2.1": {"conv": "separable"},
                     "layer4.0": {"width": 0.25}}, "meta:2")
    built = build(model, recipe, blocks, head, x)
    m = built.model
    assert m.conv1.out_channels == 48 and m.layer1[1].conv2.out_channels == 48
    assert m.layer2[0].downsample[0].in_channels == 48  # the next stage's inputs follow
    assert m.layer2[1].bn2.num_features == 64 and m.fc.in_features == 384
    assert m(x).shape == (4, 10)
    assert 0 < built.init_errors["layer1.0:width"] < 1
    assert "layer2.0:width" in built.init_errors
    assert recipe.summary([b.name for b in blocks], shown_axes(blocks)).endswith(
        "width 3.5...3. head meta:2")
    # shape-only: exact against the built model, the table equal to the per-layer sums
    costs = ShapeCosts(model, blocks, head, shape, space.blocks.prune_round_to)
    assert costs.resized(recipe) == built.resized
    exact = costs.exact(recipe)
    assert exact["params"] == count_params(m) and exact["flops"] == count_flops(m, shape)
    layout = Layout.from_blocks(blocks, space.blocks.head)
    table = costs.table(layout)
    row = layout.encode(recipe.to_dict())
    got = {k: float(v[0]) for k, v in table.predict(row[None]).items()}
    assert got == pytest.approx(costs.costs(recipe), rel=1e-9)
    assert got["params"] == exact["params"] and got["flops"] == exact["flops"]
    # random recipes with width everywhere it is allowed: still exact
    for r in layout.random_rows(np.random.default_rng(3), 3):
        rec = Recipe.from_dict(layout.decode(r))
        assert table.predict(r[None])["params"][0] == costs.exact(rec)["params"]
    # the profile has a row per owner and width value
    rows = [r for r in wanted_rows(layout, head) if r[1] == "width"]
    assert rows == [(b, "width", w) for b in ("layer1.0", "layer2.0", "layer3.0", "layer4.0")
                    for w in (0.25, 0.5)]
    # the latency table times each block a width value reaches, with its inputs shrunk
    lat = LatencyTable(costs, model, space.measure)
    cfgs = [c for c in lat.configs(layout) if isinstance(c[1], tuple) and c[1][0] == "stage"]
    assert ("layer2.0", ("stage", "layer1.0", "width", 0.5)) in cfgs
    module, in_shape = lat.module("layer1.1", ("stage", "layer1.0", "width", 0.5))
    assert in_shape[0] == 32 and module(torch.randn(1, *in_shape)).shape[1] == 32


def test_width_is_left_out_where_no_residual_add_shares_the_channels(tmp_path):
    space, model, blocks, head = _setup(
        tmp_path, arch='"examples.vgg.model:vgg_style"', kwargs=", kwargs: {width: 16, hidden: 32}")
    assert all(b.allowed("width") == (0.0,) for b in blocks)
    assert all("no residual add shares" in b.dropped["width 0.25"] for b in blocks)
    assert shown_axes(blocks) == ["conv", "prune", "bits"]


def test_width_in_an_inverted_residual_net(tmp_path):
    space, model, blocks, head = _setup(tmp_path, arch="mobilenet_v2",
                                        kwargs=", kwargs: {width_mult: 0.25}")
    owners = {b.name: b.info["width"]["blocks"] for b in blocks if b.info.get("width")}
    assert owners["features.2"] == ["features.2", "features.3"]  # 24 channels, one add
    x = torch.randn(2, *input_shape(space.model))
    built = build(model, Recipe({"features.2": {"width": 0.5}}), blocks, head, x)
    assert built.model.features[3].conv[2].out_channels == 4  # 8 -> 4 channels
    assert built.model(x).shape == (2, 10)
    # every stage, from shapes alone as built (features.1's projection loses inputs and
    # outputs: both are the stem's channels)
    costs = ShapeCosts(model, blocks, head, input_shape(space.model))
    for owner in owners:
        recipe = Recipe({owner: {"width": 0.5}})
        assert costs.resized(recipe) == build(model, recipe, blocks, head, x, init=False).resized
