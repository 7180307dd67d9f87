"""Recipes and builds: every choice composes inside a block; the base is never touched."""

from __future__ import annotations

import copy

import pytest
import torch

from searchcomp.candidate import Recipe, build, uniform_recipe
from searchcomp.choices.layers.meta import MetaConv2d, MetaLinear
from searchcomp.choices.layers.separable import SeparableConv2d
from searchcomp.choices.quant import weight_bits
from searchcomp.config import load_space
from searchcomp.errors import ChoiceError
from searchcomp.measure import compute_size_mib as size_mib
from searchcomp.measure import count_params
from searchcomp.models import build_model, find_blocks, find_head


@pytest.fixture
def setup(tiny_space_file):
    space = load_space(tiny_space_file)
    base = build_model(space.model).eval()
    blocks = find_blocks(base, space)
    head, _ = find_head(base, space)
    return space, base, blocks, head


def test_mixed_recipe_builds_runs_and_leaves_base_alone(setup):
    space, base, blocks, head = setup
    before = copy.deepcopy(base.state_dict())
    recipe = Recipe({"layer1.0": {"conv": "separable", "prune": 0.5, "bits": 8},
                     "layer2.1": {"conv": "meta:4", "prune": 0.5},
                     "layer4.0": {"bits": 4}}, head="meta:2")
    x = torch.randn(16, 1, 8, 8)
    built = build(base, recipe, blocks, head, x)
    m = built.model
    assert m(x).shape == (16, 10)
    assert isinstance(m.layer1[0].conv2, SeparableConv2d)
    assert m.layer1[0].conv1.pointwise.out_channels == 32  # pruned to half, then swapped
    assert isinstance(m.layer2[1].conv1, MetaConv2d)
    assert isinstance(m.fc, MetaLinear)
    assert weight_bits(m.layer1[0].conv2.pointwise) == 8
    assert weight_bits(m.layer4[0].conv1) == 4 and weight_bits(m.layer3[0].conv1) == 32
    assert set(built.init_errors) == {"layer1.0.conv1", "layer1.0.conv2", "layer2.1.conv1",
                                      "layer2.1.conv2", "fc", "layer1.0:prune",
                                      "layer2.1:prune", "layer1.0:bits", "layer4.0:bits"}
    assert all(0 <= e < 2 for e in built.init_errors.values())
    # removing half the filters costs more than 8-bit rounding; both are measured
    assert built.init_errors["layer1.0:prune"] > built.init_errors["layer1.0:bits"] > 0
    assert built.pruned["layer1.0"]["conv1"] == (64, 32)
    assert count_params(m) < count_params(base)
    assert size_mib(m) < size_mib(base)
    # fine-tunable: gradients reach every trainable tensor
    m.train()
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    # the base is untouched
    after = base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_base_recipe_is_identity(setup):
    _, base, blocks, head = setup
    x = torch.randn(4, 1, 8, 8)
    r = Recipe()
    assert r.is_base()
    built = build(base, r, blocks, head, x)
    assert torch.equal(built.model(x), base(x))


def test_recipe_round_trip_and_summary(setup):
    _, _, blocks, _ = setup
    r = Recipe({"layer1.0": {"conv": "separable", "prune": 0.0, "bits": 8}}, head="meta:2")
    d = r.to_dict()
    assert d == {"blocks": {"layer1.0": {"conv": "separable", "bits": 8}}, "head": "meta:2"}
    assert Recipe.from_dict(d).to_dict() == d
    names = [b.name for b in blocks]
    assert r.summary(names).startswith("conv S....... prune ........ bits 8.......")
    u = uniform_recipe(blocks, conv="separable", bits=4)  # 4 bits not allowed: left out
    assert all(u.choice(b.name, "conv") == "separable" and u.choice(b.name, "bits") == 32
               for b in blocks)
    with pytest.raises(ChoiceError, match="unknown choices"):
        Recipe.from_dict({"blocks": {"layer1.0": {"depth": 3}}})


def test_summary_rounds_prune_ratios_half_up(setup):
    # round() rounds half to even: 0.25 showed "2" while 0.75 showed "8"
    r = Recipe({"layer1.0": {"prune": 0.25}, "layer1.1": {"prune": 0.75},
                "layer2.0": {"prune": 0.35}, "layer2.1": {"prune": 0.05},
                "layer3.0": {"prune": 0.5}, "layer3.1": {"prune": 0.95}})
    names = [b.name for b in setup[2]]
    assert " prune 384159.. " in r.summary(names)


def test_pruning_rounds_for_grouped_replacement(setup):
    _, base, blocks, head = setup
    # 0.1 of 64 would leave 58, which meta:4 cannot split; build keeps a multiple of 4
    built = build(base, Recipe({"layer1.0": {"conv": "meta:4", "prune": 0.1}}), blocks, head,
                  torch.randn(4, 1, 8, 8))
    assert built.pruned["layer1.0"]["conv1"][1] % 4 == 0


def test_unknown_block_in_recipe(setup):
    _, base, blocks, head = setup
    with pytest.raises(ChoiceError, match="not searchable"):
        build(base, Recipe({"layer9.0": {"bits": 8}}), blocks, head, torch.randn(2, 1, 8, 8))
