"""A candidate = the base network + one recipe of per-block choices.

The recipe is plain data (it goes into the study, into ``recipe.yaml`` on export): per block,
a value of each choice axis (:mod:`searchcomp.choices.axes`). ``build`` turns base + recipe
into a new model without touching the base. The axes apply in a fixed order of phases so
they compose inside one block: resize (``prune``, ``width``: on the pure base graph, where
the dependency graph is exact) -> replace convs and head (initialised from the pruned
weights) -> the weights' representation (``bits``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from searchcomp import choices
from searchcomp.choices import axes
from searchcomp.choices.axes.bits import CODES as BITS_CODES  # noqa: F401 - re-exported
from searchcomp.choices.axes.bits import INT8_BITS  # noqa: F401 - re-exported
from searchcomp.choices.axes.prune import multiple as prune_multiple  # noqa: F401
from searchcomp.choices.probe import (  # noqa: F401 - re-exported
    ERROR_IMAGES,
    capture_inputs,
    layer_sizes,
)
from searchcomp.config import KEEP
from searchcomp.errors import ChoiceError
from searchcomp.models import Block, set_submodule

#: build phases, with the names their wall time is recorded under (``phase_seconds``)
PHASE_SECONDS = {"resize": "prune", "replace": "replace", "weights": "quantize"}


@dataclass(frozen=True)
class Recipe:
    """Per-block choices, e.g. ``{"layer1.0": {"conv": "separable", "prune": 0.25, "bits": 8}}``.

    An axis left out of a block means its neutral value (keep / no pruning / float / ...).
    """

    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    head: str = KEEP

    def choice(self, block: str, name: str) -> Any:
        """The value of axis ``name`` for ``block`` (neutral if unset)."""
        return self.blocks.get(block, {}).get(name, axes.neutral(name))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-friendly form (only non-neutral choices)."""
        out: dict[str, dict[str, Any]] = {}
        for b, ch in self.blocks.items():
            kept = {k: v for k, v in ch.items() if v != axes.neutral(k)}
            if kept:
                out[b] = kept
        return {"blocks": out, "head": self.head}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict` (also accepts full, neutral-including forms)."""
        blocks = {str(b): {str(k): v for k, v in ch.items()}
                  for b, ch in (d.get("blocks") or {}).items()}
        known = set(axes.names())
        for b, ch in blocks.items():
            unknown = set(ch) - known
            if unknown:
                raise ChoiceError(f"recipe block {b}: unknown choices {sorted(unknown)}")
        return cls(blocks, str(d.get("head", KEEP)))

    def is_base(self) -> bool:
        """True when every choice is neutral: the candidate is the base model."""
        return not self.to_dict()["blocks"] and self.head == KEEP

    def summary(self, block_names: list[str], shown: list[str] | None = None) -> str:
        """Compact one-line form, one character per block in model order for each axis, e.g.
        ``conv S..M prune 2..5 bits 8.48 head meta:2`` (see :func:`legend`). ``shown``: the
        axes to show (default: the built-in ones and any this recipe uses)."""
        parts = []
        for a in _shown(self, block_names, shown):
            parts.append(f"{a.name} " + "".join(a.code(self.choice(b, a.name))
                                                for b in block_names))
        return " ".join([*parts, f"head {self.head}"])


def _shown(recipe: Recipe | None, block_names: list[str], shown: list[str] | None
           ) -> list[axes.Axis]:
    if shown is not None:
        return [a for a in axes.all_axes() if a.name in shown]
    used = {a: [recipe.choice(b, a) for b in block_names] for a in axes.names()} \
        if recipe is not None else None
    return axes.shown(used)


def shown_axes(blocks: list[Block]) -> list[str]:
    """The axes a study's summary lines show: the built-in ones and any other some block
    allows a non-neutral value of (so every trial's line has the same columns)."""
    return [a.name for a in axes.shown({a: [v for b in blocks for v in b.allowed(a)]
                                        for a in axes.names()})]


def used_axes(recipes: list[dict[str, Any] | None]) -> list[str]:
    """The axes summary lines of these plain recipes show: the built-in ones and any other
    some recipe sets."""
    used = {a for r in recipes for ch in ((r or {}).get("blocks") or {}).values() for a in ch}
    return [a.name for a in axes.all_axes() if a.always or a.name in used]


def legend(shown: list[str] | None = None) -> str:
    """What the characters of :meth:`Recipe.summary` mean."""
    return "choices: per block in model order; " + "; ".join(
        f"{a.name} {a.legend()}" for a in _shown(None, [], shown))


def uniform_recipe(blocks: list[Block], head: str = KEEP,
                   **values: Any) -> Recipe:
    """The same choices on every block (where the block allows them)."""
    out = {}
    for b in blocks:
        allowed = b.values()
        out[b.name] = {k: v for k, v in values.items() if v in allowed.get(k, [])}
    return Recipe(out, head)


@dataclass
class Built:
    """A candidate model and what its construction measured."""

    model: nn.Module
    #: relative output error of each replaced layer right after its init
    init_errors: dict[str, float]
    #: per block, per pruned conv: (out channels before, after)
    pruned: dict[str, dict[str, tuple[int, int]]]
    #: sizes of every layer the resizing axes changed (see :func:`layer_sizes`): with the
    #: recipe, all :func:`rebuild` needs to give the candidate's architecture
    resized: dict[str, dict[str, int]] = field(default_factory=dict)
    #: wall seconds of each phase: prune (every resizing axis), replace (with the inits and
    #: local fits), quantize
    seconds: dict[str, float] = field(default_factory=dict)


def build(base: nn.Module, recipe: Recipe, blocks: list[Block], head_name: str,
          calib: torch.Tensor, *, prune_criterion: str = "l1",
          grad_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
          prune_round_to: int = 1, init: bool = True, int8: Any = None) -> Built:
    """Build the candidate of ``recipe`` from a copy of ``base`` (which is never modified).

    ``calib`` is a small batch of training inputs: local fits and init errors use the
    activations it produces, and pruning traces the graph with one of its images. Without
    ``init`` the replacements keep their constructed weights (for when a trained state is
    loaded right after; the architecture is the same). With ``int8`` (the
    ``onnxruntime-int8`` runtime: the study's :class:`~searchcomp.config.int8.Int8Scheme`,
    or its name; ``True`` = the default scheme) blocks at <= 8 bits also simulate int8
    execution with that scheme (:func:`~searchcomp.choices.actquant.simulate_int8`),
    calibrated on ``calib``.
    """
    by_name = {b.name: b for b in blocks}
    unknown = set(recipe.blocks) - set(by_name)
    if unknown:
        raise ChoiceError(f"recipe names blocks that are not searchable: {sorted(unknown)}")
    model = copy.deepcopy(base).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    state = axes.BuildState(model, recipe, by_name, head_name, calib, prune_criterion,
                            grad_batches, prune_round_to, init, int8)
    seconds: dict[str, float] = {}
    sizes = layer_sizes(model)
    resized: dict[str, dict[str, int]] = {}
    for phase in axes.PHASES:
        clock = time.perf_counter()
        for axis in axes.in_phase(phase):
            axis.apply(state)
        if phase == "resize":
            resized = {n: s for n, s in layer_sizes(model).items() if sizes.get(n) != s}
        elif phase == "replace" and recipe.head != KEEP:
            _replace_head(state)
        seconds[PHASE_SECONDS[phase]] = time.perf_counter() - clock
    return Built(model.eval(), state.errors, state.pruned, resized, seconds)


def _replace_head(state: axes.BuildState) -> None:
    model, name, value = state.model, state.head_name, state.recipe.head
    inputs = capture_inputs(model, state.calib, [name]) if state.init else {}
    layer = model.get_submodule(name)
    cname, arg = choices.parse_value(value, "head")
    c = choices.get(cname, "head")
    why = c.reason(layer, arg)
    if why:
        raise ChoiceError(f"{value} cannot apply to {name}"
                          f"{' after pruning' if state.pruned else ''}: {why}")
    applied = c.apply(layer, arg, inputs.get(name), init=state.init)
    set_submodule(model, name, applied.module)
    if state.init:
        state.errors[name] = float(applied.init_error)


def resize_layers(model: nn.Module, sizes: dict[str, dict[str, int]]) -> None:
    """Replace each named layer by one of the same kind with the given sizes (fresh weights):
    the shapes filter pruning left, without tracing a dependency graph."""
    for name, s in sizes.items():
        m = model.get_submodule(name)
        if isinstance(m, nn.Conv2d):
            new: nn.Module = nn.Conv2d(s["in"], s["out"], m.kernel_size, m.stride, m.padding,
                                       m.dilation, s["groups"], m.bias is not None,
                                       m.padding_mode)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            new = type(m)(s["features"], m.eps, m.momentum, m.affine, m.track_running_stats)
        elif isinstance(m, nn.Linear):
            new = nn.Linear(s["in"], s["out"], m.bias is not None)
        else:
            raise ChoiceError(f"cannot resize {name}: a {type(m).__name__}")
        set_submodule(model, name, new)


def rebuild(arch: nn.Module, recipe: Recipe, blocks: list[Block], head_name: str,
            resized: dict[str, dict[str, int]]) -> nn.Module:
    """The candidate's float architecture (untrained weights) from the base architecture
    ``arch`` (modified in place and returned), the recipe and the layer sizes the resizing
    axes left (:attr:`Built.resized`). Needs only torch: what loading an exported state uses."""
    resize_layers(arch, resized)
    for axis in axes.in_phase("replace"):
        axis.restructure(arch, recipe, blocks, head_name)
    if recipe.head != KEEP:
        name, arg = choices.parse_value(recipe.head, "head")
        set_submodule(arch, head_name,
                      choices.get(name, "head").structure(arch.get_submodule(head_name), arg))
    return arch.eval()


def describe(built: Built) -> dict[str, Any]:
    """Readable facts about a build for logs and the study."""
    worst = max(built.init_errors.values(), default=0.0)
    return {"init_errors": built.init_errors, "max_init_error": worst,
            "pruned": {b: {c: list(v) for c, v in d.items()} for b, d in built.pruned.items()}}
