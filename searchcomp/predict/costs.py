"""Exact params, MiB and FLOPs of any recipe without building or training it: shapes only.

Every layer's shape comes from the axes: the resizing ones (``prune``, ``width``) by
arithmetic on the channel groups they traced once (:meth:`Axis.resizers
<searchcomp.choices.axes.Axis.resizers>`, the same ``n_remove`` the real pruning uses), the
replacements from each layer choice's ``structure``, the bit widths from ``bits``. A layer
is built alone on the ``meta`` device (no memory, no init) at its new shape and counted by
the same functions as a real candidate: params, the bytes of its compact state_dict records,
its FLOPs at its own input shape.

A recipe's cost is the base's plus each changed layer's change, and a layer's change depends
only on the few columns (block x axis, or the head) that touch it: a block's own axes, the
block whose pruning shrinks its inputs (a plain CNN), the stage whose width it carries. So
:meth:`ShapeCosts.table` gives one small table per group of layers touched by the same
columns (:class:`~searchcomp.predict.table.CostTable`), exact for every recipe, coupled
blocks included, and scored in microseconds. The tests hold it equal to the built models.
"""

from __future__ import annotations

import copy
import math
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from searchcomp import choices
from searchcomp.candidate import Recipe, rebuild, resize_layers
from searchcomp.choices import axes
from searchcomp.choices.probe import first_input, layer_sizes
from searchcomp.config import FLOAT_BITS, KEEP
from searchcomp.deploy.packed import packed_nbytes
from searchcomp.measure import count_params
from searchcomp.predict.layout import Layout
from searchcomp.predict.table import CostTable, Factor

#: the head's column, as a (unit, axis) variable
HEAD = ("", "head")

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


def _plain_flops(layer: nn.Module, shape: tuple[int, ...]) -> int | None:
    """FLOPs of a plain Conv2d or Linear on ``shape`` as FlopCounterMode counts them (2 per
    multiply-accumulate, no bias), in closed form; None for anything else."""
    if type(layer) is nn.Conv2d and len(shape) == 4:
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(
            shape[2:], layer.padding, layer.dilation, layer.kernel_size, layer.stride,
            strict=True)] if isinstance(layer.padding, tuple) else None
        if out is None:
            return None
        return 2 * shape[0] * layer.out_channels * math.prod(out) * (
            layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
    if type(layer) is nn.Linear:
        return 2 * math.prod(shape[:-1]) * layer.in_features * layer.out_features
    return None


def _is_quantized(key: str, tree: nn.Module, bits: dict[str, int]) -> bool:
    """Whether state_dict ``key`` of ``tree`` is stored quantized under ``bits``."""
    for prefix, b in bits.items():
        if b == FLOAT_BITS:
            continue
        for name, m in tree.get_submodule(prefix).named_modules():
            for t in _quantized_names(m):
                if key == ".".join(p for p in (prefix, name, t) if p):
                    return True
    return False


class ShapeCosts:
    """Costs of recipes of one base architecture, from shapes alone.

    ``base`` is any instance of the architecture (its weights are never read);
    ``input_shape`` is one example's shape. Tracing the channel groups costs a forward pass
    of the real model; after that nothing runs on real tensors.
    """

    def __init__(self, base: nn.Module, blocks: list[Any], head_name: str,
                 input_shape: tuple[int, ...], prune_round_to: int = 1) -> None:
        self.blocks = {b.name: b for b in blocks}
        self.head_name = head_name
        self.input_shape = tuple(input_shape)
        self.prune_round_to = prune_round_to
        self.sizes = layer_sizes(base)
        example = torch.zeros(1, *input_shape)
        #: every channel group a resizing axis's values shrink
        self.resizers = [r for a in axes.all_axes() if a.resizes
                         for r in a.resizers(base, blocks, example, head_name)]
        self.meta = copy.deepcopy(base).to(META).eval()
        self.modules = dict(self.meta.named_modules())
        self.inputs = self._input_shapes()
        #: layer -> [(resizer, kind, per)] and layer -> [((unit, axis), effect)]
        self.resizing: dict[str, list[tuple[Any, str, int]]] = {}
        for r in self.resizers:
            for layer, kind, per in r.members:
                self.resizing.setdefault(layer, []).append((r, kind, per))
        self.effects: dict[str, list[tuple[tuple[str, str], str]]] = {}
        for b in blocks:
            for a in axes.all_axes():
                if not a.resizes and any(v != a.neutral for v in b.allowed(a.name)):
                    for layer, effect in a.effects(b, self.meta).items():
                        self.effects.setdefault(layer, []).append(((b.name, a.name), effect))
        self.effects.setdefault(head_name, []).append((HEAD, "replace"))
        self._memo: dict[tuple, dict[str, float]] = {}
        self.base = self._totals(self.meta)

    # -- shapes --------------------------------------------------------------------------
    def _input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The input shape (batch 1) of every block, the head and every layer."""
        got: dict[str, tuple[int, ...]] = {}
        names = [*self.blocks, self.head_name, *(n for n, m in self.modules.items()
                                                 if isinstance(m, (nn.Conv2d, nn.Linear)))]
        hooks = [self.meta.get_submodule(n).register_forward_pre_hook(
            lambda _m, args, n=n: got.__setitem__(n, tuple(first_input(args).shape)))
            for n in dict.fromkeys(names)]
        try:
            with torch.no_grad():
                self.meta(torch.zeros(1, *self.input_shape, device="meta"))
        finally:
            for h in hooks:
                h.remove()
        return got

    def variables(self, layer: str) -> list[tuple[str, str]]:
        """The (unit, axis) columns whose values change ``layer`` (the head: ``("", "head")``)."""
        out: dict[tuple[str, str], None] = {}
        for r, _kind, _per in self.resizing.get(layer, []):
            out[(r.unit, r.axis)] = None
            out.update(dict.fromkeys(r.depends))
        for var, _effect in self.effects.get(layer, []):
            out[var] = None
        return list(out)

    @staticmethod
    def _neutral(var: tuple[str, str]) -> Any:
        return KEEP if var == HEAD else axes.neutral(var[1])

    def _state(self, layer: str, values: dict[tuple[str, str], Any]) -> tuple:
        """``layer``'s sizes, replacement and bit width under ``values`` (missing: neutral)."""
        def val(var: tuple[str, str]) -> Any:
            return values.get(var, self._neutral(var))

        sizes = dict(self.sizes.get(layer, {}))
        for r, kind, per in self.resizing.get(layer, []):
            v = val((r.unit, r.axis))
            if v == axes.neutral(r.axis):
                continue
            n = axes.get(r.axis).count(r, v, {d: val(d) for d in r.depends})
            if kind == "features":
                sizes["features"] -= n
            elif kind == "depthwise":
                sizes["in"] -= n
                sizes["out"] -= n
                sizes["groups"] -= n
            else:
                sizes[kind] -= n * (per if kind == "in" else 1)
        replace, bits = None, FLOAT_BITS
        for var, effect in self.effects.get(layer, []):
            v = val(var)
            if effect == "replace" and v != self._neutral(var):
                replace = ("head" if var == HEAD else "conv", str(v))
            elif effect == "bits":
                bits = int(v)
        return tuple(sorted(sizes.items())), replace, bits

    def _layer(self, layer: str, state: tuple) -> dict[str, float]:
        """Params, bytes and FLOPs of ``layer`` alone in ``state`` (memoised)."""
        key = (layer, state)
        if key not in self._memo:
            module = self.modules[layer]
            shape = self.inputs.get(layer)
            # layers of the same structure in the same state cost the same but for the
            # bytes of their state_dict keys: count one at a stand-in path, then correct
            same = (repr(module), state, shape)
            if same not in self._memo:
                self._memo[same] = self._count(module, state, shape)
            c = self._memo[same]
            self._memo[key] = {"params": c["params"], "flops": c["flops"],
                               "bytes": c["bytes"] + c["keys"] * (len(layer) - 1)}
        return self._memo[key]

    def _count(self, module: nn.Module, state: tuple, shape: tuple[int, ...] | None
               ) -> dict[str, float]:
        sizes, replace, bits = state
        tree = shell("x", copy.deepcopy(module))
        with META:
            if sizes and dict(sizes) != layer_sizes(module).get(""):
                resize_layers(tree, {"x": dict(sizes)})
            if replace is not None:
                target, value = replace
                name, arg = choices.parse_value(value, target)
                tree.set_submodule("x", choices.get(name, target).structure(
                    tree.get_submodule("x"), arg))
        flops = 0
        if shape is not None:
            shape = (shape[0], dict(sizes).get("in", shape[1]), *shape[2:])
            layer = tree.get_submodule("x")
            flops = _plain_flops(layer, shape) if replace is None else None
            if flops is None:
                flops = self._flops(layer, shape)
        quantized = {"x": bits}
        return {"params": count_params(tree), "flops": flops,
                "bytes": self._size_bytes(tree, quantized),
                "keys": sum(3 if _is_quantized(k, tree, quantized) else 1
                            for k in tree.state_dict(keep_vars=True))}

    def resized(self, recipe: Recipe) -> dict[str, dict[str, int]]:
        """The layer sizes the resizing axes leave (what
        :attr:`searchcomp.candidate.Built.resized` holds after a real build)."""
        values = self.assignment(recipe)
        out = {}
        for layer in self.resizing:
            sizes = dict(self._state(layer, values)[0])
            if sizes != self.sizes[layer]:
                out[layer] = sizes
        return out

    def assignment(self, recipe: Recipe) -> dict[tuple[str, str], Any]:
        """Every (unit, axis) value of ``recipe``, the head's under ``("", "head")``."""
        out: dict[tuple[str, str], Any] = {(b, a): recipe.choice(b, a)
                                           for b in self.blocks for a in axes.names()}
        out[HEAD] = recipe.head
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

    def _changed(self, layer: str, values: dict[tuple[str, str], Any]) -> dict[str, float]:
        new = self._layer(layer, self._state(layer, values))
        old = self._layer(layer, self._state(layer, {}))
        return {k: new[k] - old[k] for k in new}

    def costs(self, recipe: Recipe) -> dict[str, float]:
        """The same figures as :meth:`exact`, as the base's plus each changed layer's change
        (each layer counted alone, memoised)."""
        values = self.assignment(recipe)
        out = dict(self.base)
        for layer in {*self.resizing, *self.effects}:
            d = self._changed(layer, values)
            out["params"] += d["params"]
            out["flops"] += d["flops"]
            out["size_mib"] += d["bytes"] / 2**20
        return out

    def delta(self, recipe: Recipe) -> dict[str, float]:
        """Cost change of ``recipe`` against the base."""
        c = self.costs(recipe)
        return {k: c[k] - self.base[k] for k in COSTS}

    def table(self, layout: Layout) -> CostTable:
        """One factor per group of layers the same columns change, over every value of those
        columns (see the module doc)."""
        columns = {v: layout.column(*v) for v in layout.columns()}
        columns[HEAD] = layout.n_columns - 1
        values = {(b, a): layout.values[i][k] for i, b in enumerate(layout.blocks)
                  for k, a in enumerate(layout.axes)}
        values[HEAD] = layout.head
        groups: dict[tuple, list[str]] = {}
        for layer in {*self.resizing, *self.effects}:
            var = tuple(v for v in self.variables(layer) if len(values.get(v, ())) > 1)
            if var:
                groups.setdefault(var, []).append(layer)
        factors = []
        for var, layers in groups.items():
            shape = tuple(len(values[v]) for v in var)
            arr = {k: np.zeros(shape) for k in COSTS}
            for idx in product(*[range(n) for n in shape]):
                assign = {v: values[v][i] for v, i in zip(var, idx, strict=True)}
                for layer in layers:
                    d = self._changed(layer, assign)
                    arr["params"][idx] += d["params"]
                    arr["flops"][idx] += d["flops"]
                    arr["size_mib"][idx] += d["bytes"] / 2**20
            factors.append(Factor(tuple(columns[v] for v in var), arr))
        return CostTable(layout, {k: float(self.base[k]) for k in COSTS}, factors)
