"""A candidate = the base network + one recipe of per-block choices.

The recipe is plain data (it goes into the study, into ``recipe.yaml`` on export); ``build``
turns base + recipe into a new model without touching the base. Phases run in a fixed order
so they compose inside one block: prune (on the pure base graph, where the dependency graph
is exact) -> replace convs and head (initialised from the pruned weights) -> quantize weights.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from searchcomp import choices
from searchcomp.choices.actquant import calibrate_activations, simulate_int8
from searchcomp.choices.fit import relative_error
from searchcomp.choices.quant import quantize_module
from searchcomp.config import FLOAT_BITS, KEEP, NEUTRAL
from searchcomp.errors import ChoiceError
from searchcomp.models import Block, set_submodule

#: blocks at this width or less run int8 kernels in the ``onnxruntime-int8`` runtime
INT8_BITS = 8
#: the summary characters of the bit widths (``.`` = float)
BITS_CODES = {FLOAT_BITS: ".", 16: "h", 8: "8", 6: "6", 4: "4", 2: "2"}


@dataclass(frozen=True)
class Recipe:
    """Per-block choices, e.g. ``{"layer1.0": {"conv": "separable", "prune": 0.25, "bits": 8}}``.

    Choices left out of a block mean keep / no pruning / float.
    """

    blocks: dict[str, dict[str, Any]] = field(default_factory=dict)
    head: str = KEEP

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
        return cls(blocks, str(d.get("head", KEEP)))

    def is_base(self) -> bool:
        """True when every choice is neutral: the candidate is the base model."""
        return not self.to_dict()["blocks"] and self.head == KEEP

    def summary(self, block_names: list[str]) -> str:
        """Compact one-line form, one character per block in model order for each choice
        kind, e.g. ``conv S..M prune 2..5 bits 8.48 head meta:2`` (see :func:`legend`)."""
        conv = "".join(choices.code(self.choice(b, "conv")) for b in block_names)
        prune = "".join(prune_code(self.choice(b, "prune")) for b in block_names)
        bits = "".join(BITS_CODES[self.choice(b, "bits")] for b in block_names)
        return f"conv {conv} prune {prune} bits {bits} head {self.head}"


def prune_code(ratio: float) -> str:
    """The summary digit of a prune ratio: tenths of the filters removed, rounded half up
    (``round`` rounds half to even: 0.25 would show 2 and 0.75 8), at most 9; ``.`` for 0."""
    if not ratio:
        return "."
    return str(min(9, math.floor(10 * float(ratio) + 0.5 + 1e-9)))


def legend() -> str:
    """What the characters of :meth:`Recipe.summary` mean."""
    return (f"choices: per block in model order; conv {choices.legend('conv')}; "
            "prune digit = tenths of the filters removed; bits . float, h 16, 8/6/4/2")


def uniform_recipe(blocks: list[Block], head: str = KEEP,
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
    #: sizes of every layer pruning changed (see :func:`layer_sizes`): with the recipe, all
    #: :func:`rebuild` needs to give the candidate's architecture without the base's weights
    resized: dict[str, dict[str, int]] = field(default_factory=dict)
    #: wall seconds of each phase: prune, replace (with the inits and local fits), quantize
    seconds: dict[str, float] = field(default_factory=dict)


def build(base: nn.Module, recipe: Recipe, blocks: list[Block], head_name: str,
          calib: torch.Tensor, *, prune_criterion: str = "l1",
          grad_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
          prune_round_to: int = 1, init: bool = True, int8: bool = False) -> Built:
    """Build the candidate of ``recipe`` from a copy of ``base`` (which is never modified).

    ``calib`` is a small batch of training inputs: local fits and init errors use the
    activations it produces, and pruning traces the graph with one of its images. Without
    ``init`` the replacements keep their constructed weights (for when a trained state is
    loaded right after; the architecture is the same). With ``int8`` (the
    ``onnxruntime-int8`` runtime) blocks at <= 8 bits also simulate int8 activations
    (:func:`~searchcomp.choices.actquant.simulate_int8`), calibrated on ``calib``.
    """
    by_name = {b.name: b for b in blocks}
    unknown = set(recipe.blocks) - set(by_name)
    if unknown:
        raise ChoiceError(f"recipe names blocks that are not searchable: {sorted(unknown)}")
    model = copy.deepcopy(base).eval()
    for p in model.parameters():
        p.requires_grad_(True)

    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    ratios = {b: float(recipe.choice(b, "prune")) for b in by_name if recipe.choice(b, "prune")}
    pruned: dict[str, dict[str, tuple[int, int]]] = {}
    init_errors: dict[str, float] = {}
    resized: dict[str, dict[str, int]] = {}
    if ratios:
        from searchcomp.choices.prune import prune_blocks  # torch-pruning: only when pruning

        sizes = layer_sizes(model)
        before = _block_io(model, calib[:ERROR_IMAGES], list(ratios))
        round_to = {b: prune_multiple(by_name[b], recipe, blocks, head_name, prune_round_to)
                    for b in ratios}
        removed: dict[str, dict[str, Any]] = {}
        pruned = prune_blocks(model, ratios, calib[:1], criterion=prune_criterion,
                              grad_batches=grad_batches, round_to=round_to, removed=removed)
        resized = {n: s for n, s in layer_sizes(model).items() if sizes.get(n) != s}
        init_errors.update(_prune_errors(model, before, removed))
    seconds["prune"], clock = time.perf_counter() - clock, time.perf_counter()

    targets = _targets(recipe, blocks, head_name)
    if targets:
        inputs = _capture_inputs(model, calib, list(targets)) if init else {}
        for layer_name, (target, value) in targets.items():
            layer = model.get_submodule(layer_name)
            name, arg = choices.parse_value(value, target)
            c = choices.get(name, target)
            why = c.reason(layer, arg)
            if why:
                raise ChoiceError(f"{value} cannot apply to {layer_name}"
                                  f"{' after pruning' if ratios else ''}: {why}")
            applied = c.apply(layer, arg, inputs.get(layer_name), init=init)
            set_submodule(model, layer_name, applied.module)
            if init:
                init_errors[layer_name] = float(applied.init_error)
    seconds["replace"], clock = time.perf_counter() - clock, time.perf_counter()

    quantized = [b for b in by_name if int(recipe.choice(b, "bits")) != FLOAT_BITS]
    if quantized:
        before = _block_io(model, calib[:ERROR_IMAGES], quantized) if init else {}
        for b in quantized:
            quantize_module(model.get_submodule(b), int(recipe.choice(b, "bits")),
                            clip="mse" if init else "max")
        init_errors.update(_block_errors(model, before, "bits"))
        units = [b for b in quantized if int(recipe.choice(b, "bits")) <= INT8_BITS]
        if int8 and units:
            before = _block_io(model, calib[:ERROR_IMAGES], units) if init else {}
            for b in units:
                simulate_int8(model.get_submodule(b))
            if init:
                calibrate_activations(model, calib)
                init_errors.update(_block_errors(model, before, "int8"))
    seconds["quantize"] = time.perf_counter() - clock
    return Built(model.eval(), init_errors, pruned, resized, seconds)


def prune_multiple(block: Block, recipe: Recipe, blocks: list[Block], head_name: str,
                   round_to: int = 1) -> int:
    """What pruning ``block`` keeps channel counts at multiples of: ``round_to`` and the
    channel multiple of every replacement in ``recipe`` on a layer this pruning shrinks (the
    block's own convs, and in a plain CNN the next block's conv or the head)."""
    owner = {conv: b.name for b in blocks for conv in b.convs}
    touched = set(block.pruning) | {c for cs in block.pruning.values() for c in cs}
    if not block.pruning:  # (a hand-made Block) its own convs at least
        touched = set(block.convs)
    out = math.lcm(round_to, choices.channel_multiple(recipe.choice(block.name, "conv")))
    for layer in touched:
        if layer in owner:
            out = math.lcm(out, choices.channel_multiple(recipe.choice(owner[layer], "conv")))
        elif layer == head_name and recipe.head != KEEP:
            out = math.lcm(out, choices.channel_multiple(recipe.head, "head"))
    return out


def _targets(recipe: Recipe, blocks: list[Block], head_name: str
             ) -> dict[str, tuple[str, str]]:
    """Layer name -> (target, value) of every layer the recipe replaces."""
    out: dict[str, tuple[str, str]] = {}
    for b in blocks:
        value = recipe.choice(b.name, "conv")
        if value != KEEP:
            for conv_name in b.convs:
                out[conv_name] = ("conv", value)
    if recipe.head != KEEP:
        out[head_name] = ("head", recipe.head)
    return out


def layer_sizes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The channel sizes of every Conv2d, BatchNorm and Linear of ``model``, by name."""
    out: dict[str, dict[str, int]] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[n] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            out[n] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[n] = {"in": m.in_features, "out": m.out_features}
    return out


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
    ``arch`` (modified in place and returned), the recipe and the layer sizes pruning left
    (:attr:`Built.resized`). Needs only torch: what loading an exported state uses."""
    resize_layers(arch, resized)
    for layer_name, (target, value) in _targets(recipe, blocks, head_name).items():
        name, arg = choices.parse_value(value, target)
        new = choices.get(name, target).structure(arch.get_submodule(layer_name), arg)
        set_submodule(arch, layer_name, new)
    return arch.eval()


#: images used to report the output error that pruning and quantization leave in a block
ERROR_IMAGES = 16


@torch.no_grad()
def _block_io(model: nn.Module, x: torch.Tensor, names: list[str]
              ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each named block's (input, output) when ``model`` runs on ``x``."""
    inputs = _capture_inputs(model, x, names)
    return {n: (inputs[n], model.get_submodule(n)(inputs[n])) for n in names}


@torch.no_grad()
def _prune_errors(model: nn.Module, before: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  removed: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Relative output error of each pruned block on the same inputs as before, keyed
    ``<block>:prune``. A plain CNN's block also loses output channels and inputs (the previous
    block's pruned filters): the lost inputs are dropped from the same inputs, and the lost
    outputs count as zeros, so the error is what the next layer no longer receives."""
    model.eval()
    out = {}
    for n, (x, ref) in before.items():
        inside = {k: v for k, v in removed.items() if k == n or k.startswith(n + ".")}
        gone_in = next((v["in"] for v in inside.values()
                        if "in" in v and not all(src.startswith(n + ".") or src == n
                                                 for src in v["in_from"])), [])
        if gone_in:
            x = x[:, [i for i in range(x.shape[1]) if i not in set(gone_in)]]
        try:
            y = model.get_submodule(n)(x)
        except RuntimeError:
            continue  # inputs that do not map back: no figure rather than a wrong one
        if y.shape != ref.shape:
            gone_out = next((v["out"] for v in inside.values() if "out" in v
                             and len(v["out"]) == ref.shape[1] - y.shape[1]), None)
            if gone_out is None:
                continue  # cannot tell which channels went: no figure rather than a wrong one
            full = torch.zeros_like(ref)
            full[:, [i for i in range(ref.shape[1]) if i not in set(gone_out)]] = y
            y = full
        out[f"{n}:prune"] = relative_error(ref, y)
    return out


@torch.no_grad()
def _block_errors(model: nn.Module, before: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  what: str) -> dict[str, float]:
    """Relative output error of each changed block on the same inputs as before the change,
    keyed ``<block>:<what>`` (a block's pruning or quantization, isolated from the others)."""
    model.eval()
    return {f"{n}:{what}": relative_error(ref, model.get_submodule(n)(x))
            for n, (x, ref) in before.items()}


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

