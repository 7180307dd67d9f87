"""The choice registry: one extension point, and everything it declares is what the rest of
the package uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from searchcomp import choices
from searchcomp.candidate import Recipe, legend
from searchcomp.choices import registry
from searchcomp.choices.base import Choice


def test_builtin_choices_and_their_declarations():
    assert sorted(choices.names("conv")) == ["conv3d", "meta", "pyramid", "separable", "separable_bn"]
    assert choices.names("head") == ["meta"]
    for target in ("conv", "head"):
        codes = [c.code for c in choices.all_choices(target)]
        assert len(set(codes)) == len(codes) and "." not in codes
        for c in choices.all_choices(target):
            assert c.description and c.target == target
    assert choices.channel_multiple("meta:4") == 4 and choices.channel_multiple("conv3d:8") == 8
    assert choices.channel_multiple("separable") == 1 and choices.channel_multiple("keep") == 1


def test_parse_value_resolves_aliases_and_explains_mistakes():
    assert choices.parse_value("meta:4") == ("meta", 4)
    assert choices.parse_value("meta_head:2", "head") == ("meta", 2)   # the old spelling
    assert choices.parse_value("keep", "head") == ("keep", None)
    for value, words in [("meta", "needs an argument"), ("separable:2", "takes no argument"),
                         ("meta:0", ">= 1"), ("sepparable", "unknown conv choice"),
                         ("meta:x", "must be 'name' or 'name:N'")]:
        with pytest.raises(ValueError, match=words):
            choices.parse_value(value)
    with pytest.raises(ValueError, match="unknown head choice 'separable'"):
        choices.parse_value("separable", "head")


def test_summary_and_legend_come_from_the_registry():
    r = Recipe({"b0": {"conv": "pyramid"}, "b1": {"conv": "conv3d:4", "bits": 4},
                "b2": {"prune": 0.5}})
    assert r.summary(["b0", "b1", "b2"]) == "conv P3. prune ..5 bits .4. head keep"
    text = legend()
    for c in choices.all_choices("conv"):
        assert f"{c.code} {c.name}" in text


class _Doubler(Choice):
    """A test choice: the same conv twice as wide, then a 1x1 back (not useful, but real)."""

    name = "doubler"
    code = "D"
    description = "test only"

    def expected_params(self, layer, arg):
        return 0

    def structure(self, layer, arg):
        return nn.Identity()

    def initialise(self, new, layer, arg, inputs):
        return 0.0


@pytest.fixture
def doubler():
    registry.register(_Doubler)
    yield _Doubler
    del registry._REGISTRY[("conv", "doubler")]


def test_register_refuses_clashes(doubler):
    assert "doubler" in choices.names("conv")
    assert choices.code("doubler") == "D"
    clash = type("Clash", (_Doubler,), {"name": "doubler2", "code": "D"})
    with pytest.raises(ValueError, match="code 'D'"):
        registry.register(clash)
    again = type("Again", (_Doubler,), {"code": "Z"})
    with pytest.raises(ValueError, match="already registered"):
        registry.register(again)
    keep = type("Keep", (_Doubler,), {"name": "keep", "code": "K"})
    with pytest.raises(ValueError, match="already registered"):
        registry.register(keep)
    bad = type("Bad", (_Doubler,), {"name": "x", "code": "X", "target": "bn"})
    with pytest.raises(ValueError, match="target"):
        registry.register(bad)


def test_apply_checks_then_builds_then_initialises(doubler):
    conv = nn.Conv2d(4, 4, 3, padding=1)
    applied = choices.get("doubler").apply(conv, None, torch.randn(2, 4, 5, 5))
    assert isinstance(applied.module, nn.Identity) and applied.init_error == 0.0
    skipped = choices.get("separable").apply(conv, None, init=False)
    assert skipped.init_error != skipped.init_error  # NaN: no init was run
