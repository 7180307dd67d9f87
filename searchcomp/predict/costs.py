"""Exact params, MiB and FLOPs of any recipe without building or training it: shapes only.

Pruning's channel counts come from the pruning groups (traced once) and
:func:`~searchcomp.choices.prune.n_remove`, the same arithmetic :func:`prune_blocks` uses; the
replaced layers come from each choice's ``structure``; everything is built on the ``meta``
device (no memory, no init) and counted by the same functions as a real candidate.

Each block's changes touch only that block (pruning never leaves it), so every cost is the
base's plus one delta per block and one for the head: :meth:`ShapeCosts.table` gives the
deltas of every configuration of every block, and any recipe's costs are sums of table
entries (:class:`CostTable`), microseconds per recipe. The tests check both against the
built models.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from searchcomp import choices
from searchcomp.candidate import Recipe, layer_sizes, rebuild
from searchcomp.config import CHOICES, FLOAT_BITS, KEEP
from searchcomp.deploy.packed import packed_nbytes
from searchcomp.measure import count_params
from searchcomp.predict.layout import Layout

#: the device with shapes and no memory (spelt through ``device=`` so that no string here
#: looks like a choice's name)
META = torch.empty(0, device="meta").device
#: the costs a table holds (latency is measured: see :mod:`.latency`)
COSTS = ("params", "size_mib", "flops")
#: what ``torch.save`` adds per stored tensor (zip entry, pickle record, alignment) beyond its
#: key, and once per file (torch 2.x). A trial's ``size_mib`` is the byte count of the artifact
#: itself (:func:`searchcomp.measure.compute_size_mib`); from shapes alone it is predicted by
#: this formula of the ``torch`` runtime's compact state_dict file (the tests hold it within
#: 2 % of that file); the ONNX files of the other runtimes add their graph, so for them it is
#: the weights' payload, and ``front`` reports the gap on the finished trials.
RECORD_OVERHEAD_BYTES = 256
FILE_OVERHEAD_BYTES = 1400


def _quantized_names(m: nn.Module) -> list[str]:
    """Tensors of ``m`` itself that :func:`~searchcomp.choices.quant.quantize_module` quantizes:
    the ``weight`` of a Conv2d, Conv3d or Linear, and whatever ``quant_weights`` lists."""
    names = ["weight"] if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)) else []
    return names + [n for n in getattr(m, "quant_weights", ()) or () if n not in names]


def _quantized_bytes(key: str, shape: tuple[int, ...], bits: int) -> int:
    """Bytes the compact state_dict file holds for a quantized tensor: the
    packed codes, a float32 scale per output channel, the qinfo record, three records."""
    numel = math.prod(shape)
    channels = shape[0] if shape else 1
    return (packed_nbytes(numel, bits) + 4 * channels + 4 * (1 + len(shape))
            + 3 * (RECORD_OVERHEAD_BYTES + len(key)) + 12)


def shell(path: str, module: nn.Module) -> nn.Module:
    """A module tree holding ``module`` at dotted ``path`` and nothing else, so it keeps its
    full state-dict keys (the size metric counts their bytes)."""
    root = nn.Module()
    node = root
    parts = path.split(".")
    for p in parts[:-1]:
        child = nn.Module()
        node.add_module(p, child)
        node = child
    node.add_module(parts[-1], module)
    return root


class ShapeCosts:
    """Costs of recipes of one base architecture, from shapes alone.

    ``base`` is any instance of the architecture (its weights are never read);
    ``input_shape`` is one example's shape. Tracing the pruning groups costs one forward
    pass of the real model; after that nothing runs on real tensors.
    """

    def __init__(self, base: nn.Module, blocks: list[Any], head_name: str,
                 input_shape: tuple[int, ...], prune_round_to: int = 1) -> None:
        self.blocks = {b.name: b for b in blocks}
        self.head_name = head_name
        self.input_shape = tuple(input_shape)
        self.prune_round_to = prune_round_to
        self.sizes = layer_sizes(base)
        prunable = [b.name for b in blocks if any(b.choices.prune)]
        self.groups: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {}
        if prunable:
            from searchcomp.choices.prune import prune_groups

            example = torch.zeros(1, *input_shape)
            self.groups = prune_groups(base, {n: base.get_submodule(n) for n in prunable},
                                       example)
        self.meta = copy.deepcopy(base).to(META).eval()
        self.inputs = self._input_shapes()
        self._deltas: dict[tuple, dict[str, float]] = {}
        self._variants: dict[tuple, tuple[nn.Module, nn.Module]] = {}
        self.base = self._totals(self.meta)

    # -- shapes --------------------------------------------------------------------------
    def _input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The input shape (batch 1) of every block and of the head."""
        got: dict[str, tuple[int, ...]] = {}
        names = [*self.blocks, self.head_name]
        hooks = [self.meta.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: got.__setitem__(n, tuple(args[0].shape))) for n in names]
        try:
            with torch.no_grad():
                self.meta(torch.zeros(1, *self.input_shape, device="meta"))
        finally:
            for h in hooks:
                h.remove()
        return got

    def resized(self, recipe: Recipe) -> dict[str, dict[str, int]]:
        """The layer sizes pruning leaves (what :attr:`searchcomp.candidate.Built.resized`
        holds after a real build), by arithmetic on the traced pruning groups."""
        from searchcomp.choices.prune import n_remove

        out: dict[str, dict[str, int]] = {}
        for b in self.blocks:
            ratio = float(recipe.choice(b, "prune"))
            if not ratio:
                continue
            rt = math.lcm(self.prune_round_to, choices.channel_multiple(recipe.choice(b, "conv")))
            done: set[str] = set()
            for conv, members in self.groups.get(b, []):
                if conv in done:
                    continue
                cur = out.get(conv, self.sizes[conv])
                n = n_remove(ratio, cur["out"], rt)
                if not n:
                    continue
                for name, kind in members:
                    s = dict(out.get(name, self.sizes[name]))
                    if kind == "features":
                        s["features"] -= n
                    elif kind == "depthwise":
                        s["in"] -= n
                        s["out"] -= n
                        s["groups"] -= n
                    else:
                        s[kind] -= n
                    out[name] = s
                    if kind != "in":
                        done.add(name)
        return out

    def architecture(self, recipe: Recipe) -> nn.Module:
        """The float candidate of ``recipe`` on the meta device: every shape right, no
        weights, no quantization (bits change neither shapes nor FLOPs)."""
        with META:  # the layers pruning resizes are made new
            return rebuild(copy.deepcopy(self.meta), recipe, list(self.blocks.values()),
                           self.head_name, self.resized(recipe))

    # -- counting ------------------------------------------------------------------------
    @staticmethod
    def _size_bytes(model: nn.Module, bits: dict[str, int] | None = None) -> float:
        """Bytes of the compact state_dict file of ``model`` (float, on
        the meta device) once the named submodules are quantized to ``bits``: shapes only,
        nothing quantized or allocated. The tests hold it equal to the built model's."""
        quantized: dict[str, int] = {}
        for prefix, b in (bits or {}).items():
            if b == FLOAT_BITS:
                continue
            for name, m in model.get_submodule(prefix).named_modules():
                for t in _quantized_names(m):
                    quantized[".".join(p for p in (prefix, name, t) if p)] = b
        total = FILE_OVERHEAD_BYTES
        for key, t in model.state_dict(keep_vars=True).items():
            if key in quantized:
                total += _quantized_bytes(key, tuple(t.shape), quantized[key])
            else:
                width = 32 if t.is_floating_point() else t.element_size() * 8
                total += t.numel() * width // 8 + RECORD_OVERHEAD_BYTES + len(key)
        return float(total)

    @staticmethod
    def _flops(model: nn.Module, shape: tuple[int, ...]) -> int:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(*shape, device="meta"))
        return int(counter.get_total_flops())

    def _totals(self, model: nn.Module, bits: dict[str, int] | None = None
                ) -> dict[str, float]:
        return {"params": count_params(model), "size_mib": self._size_bytes(model, bits) / 2**20,
                "flops": self._flops(model, (1, *self.input_shape))}

    def exact(self, recipe: Recipe) -> dict[str, float]:
        """Params, MiB and FLOPs of ``recipe``'s candidate, counted on its whole architecture
        (what :func:`searchcomp.measure.measure` gives on the built model)."""
        bits = {b: int(recipe.choice(b, "bits")) for b in self.blocks}
        return self._totals(self.architecture(recipe), bits)

    def costs(self, recipe: Recipe) -> dict[str, float]:
        """The same figures as :meth:`exact`, as the base's plus each block's and the head's
        cached delta: microseconds once the deltas of the recipe's configurations are known."""
        out = dict(self.base)
        deltas = [self.block_delta(b, recipe.choice(b, "conv"), recipe.choice(b, "prune"),
                                   recipe.choice(b, "bits")) for b in self.blocks]
        if recipe.head != KEEP:
            deltas.append(self.head_delta(recipe.head))
        for d in deltas:
            for k in COSTS:
                out[k] += d[k]
        return out

    def block_delta(self, block: str, conv: str = KEEP, prune: float = 0.0,
                    bits: int = FLOAT_BITS) -> dict[str, float]:
        """Cost change of one block's configuration against the base block."""
        key = (block, conv, float(prune), int(bits))
        if key not in self._deltas:
            # bits change neither params nor FLOPs (the deployed model computes in float)
            before, after = self._variant(block, Recipe({block: {"conv": conv,
                                                                 "prune": prune}}))
            f = self._float_delta(block, conv, float(prune))
            size = (self._size_bytes(after, {block: int(bits)})
                    - self._size_bytes(before)) / 2**20
            self._deltas[key] = {**f, "size_mib": size}
        return self._deltas[key]

    def head_delta(self, value: str) -> dict[str, float]:
        """Cost change of a head value against the base head."""
        key = ("", value)
        if key not in self._deltas:
            before, after = self._variant(self.head_name, Recipe(head=value))
            self._deltas[key] = self._diff(self.head_name, before, after)
        return self._deltas[key]

    def _float_delta(self, block: str, conv: str, prune: float) -> dict[str, float]:
        key = (block, conv, prune, "float")
        if key not in self._deltas:
            before, after = self._variant(block, Recipe({block: {"conv": conv,
                                                                 "prune": prune}}))
            self._deltas[key] = self._diff(block, before, after)
        return self._deltas[key]

    def _diff(self, path: str, before: nn.Module, after: nn.Module) -> dict[str, float]:
        shape = self.inputs[path]
        return {"params": count_params(after) - count_params(before),
                "size_mib": (self._size_bytes(after) - self._size_bytes(before)) / 2**20,
                "flops": (self._flops(after.get_submodule(path), shape)
                          - self._flops(before.get_submodule(path), shape))}

    def _variant(self, path: str, recipe: Recipe) -> tuple[nn.Module, nn.Module]:
        """(base, changed) shells holding the module at ``path`` before and after the float
        part of ``recipe``, on the meta device."""
        key = (path, repr(recipe), "variant")
        if key not in self._variants:
            blocks = [b for b in self.blocks.values() if b.name == path]
            before = shell(path, copy.deepcopy(self.meta.get_submodule(path)))
            with META:
                after = rebuild(copy.deepcopy(before), recipe, blocks, self.head_name,
                                self.resized(recipe))
            self._variants[key] = (before, after)
        return self._variants[key]

    def table(self, layout: Layout) -> CostTable:
        """The delta of every configuration of every block (and head value) of ``layout``."""
        blocks = []
        for i, b in enumerate(layout.blocks):
            conv, prune, bits = layout.values[i]
            arr = {k: np.zeros((len(conv), len(prune), len(bits))) for k in COSTS}
            for (ci, c), (pi, p), (qi, q) in product(enumerate(conv), enumerate(prune),
                                                     enumerate(bits)):
                d = self.block_delta(b, c, p, q)
                for k in COSTS:
                    arr[k][ci, pi, qi] = d[k]
            blocks.append(arr)
        head = {k: np.array([self.head_delta(h)[k] if h != KEEP else 0.0 for h in layout.head])
                for k in COSTS}
        return CostTable(layout, dict(self.base), blocks, head)


@dataclass
class CostTable:
    """Per-block cost deltas: a recipe's cost is the base's plus one entry per block and one
    for the head. Holds params, size_mib, flops; a latency table adds latency_ms."""

    layout: Layout
    base: dict[str, float]
    #: per block: metric -> array indexed [conv, prune, bits]
    blocks: list[dict[str, np.ndarray]]
    #: metric -> array indexed by the head value
    head: dict[str, np.ndarray]

    @property
    def metrics(self) -> list[str]:
        """The metrics it predicts."""
        return list(self.head)

    def predict(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric of each recipe row."""
        rows = np.atleast_2d(rows)
        n = len(CHOICES)
        out = {}
        for k in self.metrics:
            total = np.full(len(rows), float(self.base[k]))
            for i, arr in enumerate(self.blocks):
                total += arr[k][rows[:, n * i], rows[:, n * i + 1], rows[:, n * i + 2]]
            total += self.head[k][rows[:, -1]]
            out[k] = total
        return out

    def merged(self, other: CostTable) -> CostTable:
        """Both tables' metrics in one (same layout)."""
        return CostTable(self.layout, {**self.base, **other.base},
                         [{**a, **b} for a, b in zip(self.blocks, other.blocks, strict=True)],
                         {**self.head, **other.head})
