"""A candidate = the base network + one recipe of per-block choices.

The recipe is plain data (it goes into the study, into ``recipe.yaml`` on export); ``build``
turns base + recipe into a new model without touching the base. Phases run in a fixed order
so they compose inside one block: prune (on the pure base graph, where the dependency graph
is exact) -> replace convs and head (initialised from the pruned weights) -> quantize weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from searchcomp import transforms
from searchcomp.blocks import Block, head_value
from searchcomp.errors import ChoiceError
from searchcomp.models import set_submodule
from searchcomp.transforms.prune import prune_blocks
from searchcomp.transforms.quant import quantize_module

NEUTRAL = {"conv": transforms.KEEP, "prune": 0.0, "bits": 32}


@dataclass(frozen=True)
class Recipe:
    """Per-block choices, e.g. ``{"layer1.0": {"conv": "separable", "prune": 0.25, "bits": 8}}``.

    Choices left out of a block mean keep / no pruning / float.
    """

    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    head: str = transforms.KEEP

    def choice(self, block: str, name: str) -> Any:
        """The value of choice ``name`` for ``block`` (neutral if unset)."""
        return self.blocks.get(block, {}).get(name, NEUTRAL[name])

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-friendly form (only non-neutral choices)."""
        out: dict[str, dict[str, Any]] = {}
        for b, ch in self.blocks.items():
            kept = {k: v for k, v in ch.items() if v != NEUTRAL[k]}
            if kept:
                out[b] = kept
        return {"blocks": out, "head": self.head}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict` (also accepts full, neutral-including forms)."""
        blocks = {str(b): {str(k): v for k, v in ch.items()}
                  for b, ch in (d.get("blocks") or {}).items()}
        for b, ch in blocks.items():
            unknown = set(ch) - set(NEUTRAL)
            if unknown:
                raise ChoiceError(f"recipe block {b}: unknown choices {sorted(unknown)}")
        return cls(blocks, str(d.get("head", transforms.KEEP)))

    def is_base(self) -> bool:
        """True when every choice is neutral: the candidate is the base model."""
        return not self.to_dict()["blocks"] and self.head == transforms.KEEP

    def summary(self, block_names: list[str]) -> str:
        """Compact one-line form, e.g. ``conv S.SS|..M. prune ...`` per block in order."""
        code = {"keep": ".", "separable": "S", "separable_bn": "B", "conv3d": "3", "meta": "M"}
        conv = "".join(code.get(transforms.parse_value(self.choice(b, "conv"))[0], "?")
                       for b in block_names)
        prune = "".join("." if self.choice(b, "prune") == 0 else
                        str(min(9, round(10 * self.choice(b, "prune")))) for b in block_names)
        bits = "".join({32: ".", 16: "h", 8: "8", 6: "6", 4: "4", 2: "2"}[self.choice(b, "bits")]
                       for b in block_names)
        return f"conv {conv} prune {prune} bits {bits} head {self.head}"


def uniform_recipe(blocks: list[Block], head: str = transforms.KEEP,
                   **choices: Any) -> Recipe:
    """The same choices on every block (where the block allows them)."""
    out = {}
    for b in blocks:
        allowed = b.values()
        out[b.name] = {k: v for k, v in choices.items() if v in allowed.get(k, [])}
    return Recipe(out, head)


@dataclass
class Built:
    """A candidate model and what its construction measured."""

    model: nn.Module
    #: relative output error of each replaced layer right after its init
    init_errors: dict[str, float]
    #: per block, per pruned conv: (out channels before, after)
    pruned: dict[str, dict[str, tuple[int, int]]]


def build(base: nn.Module, recipe: Recipe, blocks: list[Block], head_name: str,
          calib: torch.Tensor, *, prune_criterion: str = "l1",
          grad_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
          prune_round_to: int = 1) -> Built:
    """Build the candidate of ``recipe`` from a copy of ``base`` (which is never modified).

    ``calib`` is a small batch of training inputs: local fits and init errors use the
    activations it produces, and pruning traces the graph with one of its images.
    """
    by_name = {b.name: b for b in blocks}
    unknown = set(recipe.blocks) - set(by_name)
    if unknown:
        raise ChoiceError(f"recipe names blocks that are not searchable: {sorted(unknown)}")
    model = copy.deepcopy(base).eval()
    for p in model.parameters():
        p.requires_grad_(True)

    ratios = {b: float(recipe.choice(b, "prune")) for b in by_name if recipe.choice(b, "prune")}
    pruned: dict[str, dict[str, tuple[int, int]]] = {}
    init_errors: dict[str, float] = {}
    if ratios:
        before = _block_io(model, calib[:ERROR_IMAGES], list(ratios))
        round_to = {b: _round_to(recipe.choice(b, "conv"), prune_round_to) for b in ratios}
        pruned = prune_blocks(model, ratios, calib[:1], criterion=prune_criterion,
                              grad_batches=grad_batches, round_to=round_to)
        init_errors.update(_block_errors(model, before, "prune"))

    targets: dict[str, tuple[str, int | None]] = {}
    for b in by_name.values():
        name, arg = transforms.parse_value(recipe.choice(b.name, "conv"))
        if name != transforms.KEEP:
            for conv_name in b.convs:
                targets[conv_name] = (name, arg)
    if recipe.head != transforms.KEEP:
        targets[head_name] = head_value(recipe.head)

    if targets:
        inputs = _capture_inputs(model, calib, list(targets))
        for layer_name, (tname, arg) in targets.items():
            layer = model.get_submodule(layer_name)
            t = transforms.get(tname)
            why = t.check(layer, arg)
            if why:
                raise ChoiceError(f"{tname}{'' if arg is None else f':{arg}'} cannot apply to "
                                  f"{layer_name} after pruning: {why}")
            applied = t.apply(layer, arg, inputs[layer_name])
            set_submodule(model, layer_name, applied.module)
            init_errors[layer_name] = float(applied.init_error)

    quantized = [b for b in by_name if int(recipe.choice(b, "bits")) != 32]
    if quantized:
        before = _block_io(model, calib[:ERROR_IMAGES], quantized)
        for b in quantized:
            quantize_module(model.get_submodule(b), int(recipe.choice(b, "bits")))
        init_errors.update(_block_errors(model, before, "bits"))
    return Built(model.eval(), init_errors, pruned)


#: images used to report the output error that pruning and quantization leave in a block
ERROR_IMAGES = 16


@torch.no_grad()
def _block_io(model: nn.Module, x: torch.Tensor, names: list[str]
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each named block's (input, output) when ``model`` runs on ``x``."""
    inputs = _capture_inputs(model, x, names)
    return {n: (inputs[n], model.get_submodule(n)(inputs[n])) for n in names}


@torch.no_grad()
def _block_errors(model: nn.Module, before: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  what: str) -> dict[str, float]:
    """Relative output error of each changed block on the same inputs as before the change,
    keyed ``<block>:<what>`` (a block's pruning or quantization, isolated from the others)."""
    from searchcomp.transforms.fit import relative_error

    model.eval()
    return {f"{n}:{what}": relative_error(ref, model.get_submodule(n)(x))
            for n, (x, ref) in before.items()}


def _round_to(conv_value: str, base: int) -> int:
    """Channel multiple pruning must keep so a grouped replacement still divides them."""
    name, arg = transforms.parse_value(conv_value)
    if name in ("meta", "conv3d") and arg:
        return math.lcm(base, arg)
    return base


@torch.no_grad()
def _capture_inputs(model: nn.Module, x: torch.Tensor, names: list[str]
                    ) -> dict[str, torch.Tensor]:
    """The inputs each named layer receives when ``model`` runs on ``x``."""
    got: dict[str, torch.Tensor] = {}
    hooks = []
    for n in names:
        def hook(_m, args, n=n):
            got[n] = args[0].detach().clone()
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        model.eval()
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


def describe(built: Built) -> dict[str, Any]:
    """Readable facts about a build for logs and the study."""
    worst = max(built.init_errors.values(), default=0.0)
    return {"init_errors": built.init_errors, "max_init_error": worst,
            "pruned": {b: {c: list(v) for c, v in d.items()} for b, d in built.pruned.items()}}

