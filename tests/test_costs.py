"""Costs without training: shape-only params / MiB / FLOPs equal the built model's, the
per-block table adds up to them, and the latency table is stored and reused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from searchcomp.candidate import Recipe, build
from searchcomp.config import load_space
from searchcomp.measure import compute_size_mib, count_flops, count_params
from searchcomp.models import build_model, find_blocks, find_head, input_shape
from searchcomp.predict.costs import ShapeCosts
from searchcomp.predict.latency import LatencyTable
from searchcomp.predict.layout import Layout
from searchcomp.predict.store import ProfileStore

ALL = """\
name: costs
model: {{arch: {arch}, num_classes: 10, in_channels: 1, image_size: {size}}}
data: {{dataset: digits, train_size: 100, val_size: 50, test_size: 50}}
blocks:
  default: {{conv: [{conv}], prune: [0.0, 0.25, 0.5], bits: [32, 8, 4, 2]}}
  head: [keep, meta:2]
  prune_round_to: {round_to}
measure: {{runs: 30, warmup: 1}}
studies_dir: {studies}
"""


def _setup(tmp_path, arch="resnet18", size=8, conv="keep, separable, meta:4, conv3d:8, pyramid",
           round_to=1):
    p = tmp_path / "s.yaml"
    p.write_text(ALL.format(arch=arch, size=size, conv=conv, round_to=round_to,
                            studies=tmp_path / "studies"))
    space = load_space(p)
    base = build_model(space.model).eval()
    blocks = find_blocks(base, space)
    head, _ = find_head(base, space)
    return space, base, blocks, head


def _real(base, recipe, blocks, head, shape):
    built = build(base, recipe, blocks, head, torch.randn(4, *shape), init=False)
    m = built.model
    return built, {"params": count_params(m), "size_mib": compute_size_mib(m),
                   "flops": count_flops(m, shape)}


@pytest.mark.parametrize("arch,size,round_to", [
    ("resnet18", 8, 1), pytest.param("resnet50", 16, 4, marks=pytest.mark.slow)])
def test_shape_only_costs_equal_the_built_model(tmp_path, arch, size, round_to):
    space, base, blocks, head = _setup(tmp_path, arch, size, round_to=round_to)
    shape = input_shape(space.model)
    costs = ShapeCosts(base, blocks, head, shape, space.blocks.prune_round_to)
    layout = Layout.from_blocks(blocks, space.blocks.head)
    rng = np.random.default_rng(1)
    rows = [layout.neutral_row(), *layout.random_rows(rng, 3 if arch == "resnet50" else 5)]
    for row in rows:
        recipe = Recipe.from_dict(layout.decode(row))
        built, real = _real(base, recipe, blocks, head, shape)
        assert costs.resized(recipe) == built.resized  # pruning's shapes, by arithmetic
        exact = costs.exact(recipe)
        # params and FLOPs exactly; MiB as the formula of the torch runtime's file, which
        # the real artifact (serialized) matches within 2 %
        assert {k: exact[k] for k in ("params", "flops")} == \
            pytest.approx({k: real[k] for k in ("params", "flops")}, rel=1e-12)
        assert exact["size_mib"] == pytest.approx(real["size_mib"], rel=0.02)
        assert costs.costs(recipe) == pytest.approx(exact, rel=1e-9)  # the per-block sums


def test_cost_table_predicts_every_row_at_once(tmp_path):
    space, base, blocks, head = _setup(tmp_path, conv="keep, separable, meta:4")
    costs = ShapeCosts(base, blocks, head, input_shape(space.model))
    layout = Layout.from_blocks(blocks, space.blocks.head)
    table = costs.table(layout)
    rows = layout.random_rows(np.random.default_rng(0), 2000)
    pred = table.predict(rows)  # one vectorised call for all 2000 rows
    assert all(len(v) == len(rows) for v in pred.values())
    for row in rows[:3]:
        exact = costs.exact(Recipe.from_dict(layout.decode(row)))
        i = np.flatnonzero((rows == row).all(axis=1))[0]
        assert {k: pred[k][i] for k in exact} == pytest.approx(exact, rel=1e-9)


def test_layout_encodes_and_decodes_recipes(tmp_path):
    space, base, blocks, head = _setup(tmp_path, conv="keep, separable")
    layout = Layout.from_blocks(blocks, space.blocks.head)
    recipe = {"blocks": {"layer1.0": {"conv": "separable", "prune": 0.5},
                         "layer4.1": {"bits": 2}}, "head": "meta:2"}
    row = layout.encode(recipe)
    assert layout.decode(row) == recipe
    assert layout.decode(layout.neutral_row()) == {"blocks": {}, "head": "keep"}
    assert layout.size() == (2 * 3 * 4) ** 8 * 2
    with pytest.raises(ValueError, match="not among"):
        layout.encode({"blocks": {"layer1.0": {"conv": "meta:4"}}})


def test_latency_table_is_stored_and_reused(tmp_path):
    space, base, blocks, head = _setup(tmp_path, conv="keep, separable")
    space = load_space(space.file, ["blocks.default.prune=[0.0]", "blocks.default.bits=[32, 8]"])
    blocks = find_blocks(base, space)
    costs = ShapeCosts(base, blocks, head, input_shape(space.model))
    layout = Layout.from_blocks(blocks, space.blocks.head)
    store = ProfileStore(tmp_path / "p.json")
    table = LatencyTable(costs, base, space.measure, store)
    # torch runs quantized weights as float: bits are not timed separately there
    assert len(table.configs(layout)) == 1 + 8 * 2 + 2
    assert table.measure(layout) == 19
    again = LatencyTable(costs, base, space.measure, ProfileStore(tmp_path / "p.json"))
    assert again.missing(layout) == [] and again.measure(layout) == 0
    t = again.table(layout).predict(layout.neutral_row()[None])["latency_ms"][0]
    assert np.isfinite(t) and t > 0
    assert again.block_ms("layer1.0", {"conv": "separable", "bits": 8}) == \
        again.block_ms("layer1.0", {"conv": "separable"})
    # another runtime setting needs its own rows
    other = load_space(space.file, ["blocks.default.prune=[0.0]", "blocks.default.bits=[32, 8]",
                                    "measure.threads=2"])
    t2 = LatencyTable(costs, base, other.measure, ProfileStore(tmp_path / "p.json"))
    assert len(t2.missing(layout)) == 19


def test_plain_cnn_costs_follow_pruning_into_the_next_block_and_the_classifier(tmp_path):
    # a plain CNN: pruning a conv resizes its BN (outside the block), the next block's conv
    # and the Linear after the flatten (H * W inputs per channel); the old per-block shells
    # raised "resizes Linear classifier.0, which has no shape-only form" here
    p = tmp_path / "s.yaml"
    p.write_text(ALL.format(arch='"examples.vgg.model:vgg_style"', size=16,
                            conv="keep, separable, meta:4", round_to=1,
                            studies=tmp_path / "studies")
                 .replace("image_size: 16}", "image_size: 16, kwargs: {width: 8, hidden: 32}}")
                 .replace("  head: [keep, meta:2]", "  head: [keep, meta:2]\n"
                          "  head_module: classifier.0"))
    space = load_space(p)
    base = build_model(space.model).eval()
    blocks = find_blocks(base, space)
    head, _ = find_head(base, space, blocks)
    shape = input_shape(space.model)
    costs = ShapeCosts(base, blocks, head, shape)
    layout = Layout.from_blocks(blocks, space.blocks.head)
    table = costs.table(layout)
    for row in layout.random_rows(np.random.default_rng(5), 6):
        recipe = Recipe.from_dict(layout.decode(row))
        built, real = _real(base, recipe, blocks, head, shape)
        assert costs.resized(recipe) == built.resized
        pred = {k: float(v[0]) for k, v in table.predict(row[None]).items()}
        assert pred["params"] == real["params"] and pred["flops"] == real["flops"]
        assert pred["size_mib"] == pytest.approx(real["size_mib"], rel=0.05)
