"""Latency of any recipe, predicted from a per-block table measured in the configured runtime.

Each block configuration (of its block-wide axes: conv x prune, and x bits when the runtime
runs integer kernels; a stage-wide value such as ``width``: each block it reaches, with that
value alone) is built alone with fresh weights (latency does not depend on them) and timed with
:func:`searchcomp.measure.time_latency` on the block's own input shape, at the configured
threads and batch size; the head's values likewise, and the whole base once. A recipe's
latency is the base's plus each block's change: that assumes the runtime's cost is close to
additive over blocks, which :func:`latency_error` checks against every measured trial.

In the ``onnxruntime-int8`` runtime a block at <= 8 bits is built as a trial builds it: its
weights quantized, its activations simulated with the study's int8 scheme and calibrated on
the block's own inputs from the calibration images, so its ``onnx-int8`` file runs the int8
kernels a trial's would, and the table includes int8 speed.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable
from itertools import product
from typing import Any

import numpy as np
import torch
from torch import nn

from searchcomp.candidate import INT8_BITS, Recipe, rebuild
from searchcomp.choices import axes
from searchcomp.choices.actquant import calibrate_activations, simulate_int8
from searchcomp.config import FLOAT_BITS, KEEP, MeasureConfig
from searchcomp.measure import time_latency
from searchcomp.predict.costs import ShapeCosts, shell
from searchcomp.predict.layout import Layout
from searchcomp.predict.store import ProfileStore, content_key
from searchcomp.predict.table import CostTable, Factor

SECTION = "latency"
#: the profile store's entry naming the int8 scheme the int8 rows were timed with
SCHEME_ENTRY = "int8_scheme"


def bits_matter(runtime: str) -> bool:
    """Whether weight bits can change latency in ``runtime``: the float runtime runs the
    quantized weights as float (see :func:`searchcomp.measure.time_latency`), so there the
    table measures each (conv, prune) once and shares it across bit widths."""
    return runtime != "torch"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 (a one-pass read)
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_context(m: MeasureConfig) -> dict[str, Any]:
    """Everything besides the block that determines a latency row: runtime, threads, batch,
    library versions and the machine."""
    ctx = {"runtime": m.runtime, "threads": m.threads, "batch_size": m.batch_size,
           "runs": m.runs, "warmup": m.warmup, "torch": torch.__version__.split("+")[0],
           "cpu": _cpu_name(), "machine": platform.machine()}
    if m.runtime != "torch":
        import onnxruntime

        ctx["onnxruntime"] = onnxruntime.__version__
    return ctx


class LatencyTable:
    """Measured latencies of block configurations, read from / written to a profile store."""

    def __init__(self, costs: ShapeCosts, base: nn.Module, m: MeasureConfig,
                 store: ProfileStore | None = None, scheme: str | None = None,
                 calib: torch.Tensor | None = None) -> None:
        """``scheme`` (``onnxruntime-int8``): the study's int8 scheme (default: the one the
        stored rows were timed with); ``calib``: calibration images, to time int8 blocks."""
        self.costs, self.base, self.m, self.store = costs, base, m, store
        self.context = runtime_context(m)
        self.with_bits = bits_matter(m.runtime)
        self._ms: dict[str, float] = {}
        self.runtime = ""
        self.int8 = m.runtime == "onnxruntime-int8"
        self.scheme = None
        if self.int8:
            stored = store.get("settings", SCHEME_ENTRY) if store is not None else None
            self.scheme = scheme or (stored or {}).get("scheme")
            self.context["int8_scheme"] = self.scheme
        self.calib = calib
        self._inputs: dict[str, torch.Tensor] | None = None

    # -- keys ------------------------------------------------------------------------------
    def _key(self, path: str, value: Any) -> str:
        module = self.costs.meta.get_submodule(path) if path else None
        return content_key({**self.context, "path": path, "module": repr(module),
                            "input": self.costs.inputs.get(path, self.costs.input_shape),
                            "round_to": self.costs.prune_round_to, "value": value})

    def block_axes(self) -> list[Any]:
        """The axes timed together inside each block (product of their latency keys)."""
        return [a for a in axes.all_axes() if a.scope == "block"]

    def _block_configs(self, layout: Layout, i: int) -> list[tuple]:
        lay, rt = layout, self.m.runtime
        per = [dict.fromkeys([a.latency_key(a.neutral, rt), *(
            a.latency_key(v, rt) for v in lay.values[i][lay.axes.index(a.name)])])
               for a in self.block_axes()]
        return [tuple(c) for c in product(*per)]

    def _stage_configs(self, layout: Layout) -> list[tuple[str, Any]]:
        """(touched block, ("stage", owner, axis, value)) of every stage-wide value: each
        block its channels reach, timed with that value alone."""
        out = []
        for r in self.costs.resizers:
            a = axes.get(r.axis)
            if a.scope != "stage" or r.unit not in layout.blocks:
                continue
            i = layout.blocks.index(r.unit)
            touched = [b for b in layout.blocks
                       if any(m == b or m.startswith(b + ".") for m, _k, _p in r.members)]
            for v in layout.values[i][layout.axes.index(a.name)]:
                if v != a.neutral:
                    out += [(b, ("stage", r.unit, a.name, a.latency_key(v, self.m.runtime)))
                            for b in touched]
        return out

    def configs(self, layout: Layout) -> list[tuple[str, Any]]:
        """Every (path, configuration) the table of ``layout`` needs: the whole base, each
        block's configurations of its block-wide axes (conv x prune, x bits in runtimes with
        integer kernels), each block a stage-wide value reaches, and each head value."""
        out: list[tuple[str, Any]] = [("", "base")]
        for i, b in enumerate(layout.blocks):
            out += [(b, c) for c in self._block_configs(layout, i)]
        out += self._stage_configs(layout)
        for h in dict.fromkeys((KEEP, *layout.head)):
            out.append((self.costs.head_name, h))
        return list(dict.fromkeys(out))

    def missing(self, layout: Layout) -> list[tuple[str, Any]]:
        """The configurations not measured yet (in this process or the store)."""
        return [c for c in self.configs(layout) if self._get(*c) is None]

    def _get(self, path: str, value: Any) -> float | None:
        key = self._key(path, value)
        if key not in self._ms and self.store is not None:
            row = self.store.get(SECTION, key)
            if row is not None:
                self._ms[key] = float(row["latency_ms"])
                self.runtime = self.runtime or row.get("runtime", "")
        return self._ms.get(key)

    # -- measuring -------------------------------------------------------------------------
    def module(self, path: str, value: Any) -> tuple[nn.Module, tuple[int, ...]]:
        """The module timed for a configuration, with fresh weights, and its input shape
        (without the batch). A block is timed alone: the layers a resizing value changes
        outside it (the next block's inputs in a plain CNN, a stage's stem) are not."""
        if not path:
            return self.base, self.costs.input_shape
        blocks = [self.costs.blocks[path]] if path in self.costs.blocks else []
        if not blocks:
            recipe = Recipe(head=value)
        elif value[0] == "stage":
            recipe = Recipe({value[1]: {value[2]: value[3]}})
        else:
            recipe = Recipe({path: dict(zip((a.name for a in self.block_axes()), value,
                                            strict=True))})
        tree = shell(path, copy.deepcopy(self.base.get_submodule(path)))
        inside = {n: s for n, s in self.costs.resized(recipe).items()
                  if n == path or n.startswith(path + ".")}
        rebuild(tree, recipe, blocks if blocks and value[0] != "stage" else [],
                self.costs.head_name, inside)
        if blocks and value[0] != "stage":
            state = axes.BuildState(tree, recipe, {path: blocks[0]}, self.costs.head_name,
                                    None, init=False)
            for a in axes.in_phase("weights"):
                a.apply(state)
        shape = tuple(self.costs.inputs[path][1:])
        if inside:  # its input channels may have shrunk: as the whole candidate feeds it
            shape = tuple(_input_of(self.costs.architecture(recipe), path,
                                    self.costs.input_shape)[1:])
        module = tree.get_submodule(path).eval()
        bits = int(recipe.choice(path, "bits")) if blocks and value[0] != "stage" else FLOAT_BITS
        if self.int8 and bits <= INT8_BITS:
            if self.scheme is None:
                raise ValueError("timing int8 blocks needs the study's int8 scheme")
            simulate_int8(module, self.scheme)
            module = nn.Sequential(module).eval()  # the exporter finds units by name
            calibrate_activations(module, self.block_inputs(path, shape[0]))
        return module, shape

    def block_inputs(self, path: str, channels: int) -> torch.Tensor:
        """The calibration images' activations at the input of block ``path`` of the base,
        ``channels`` wide: a block whose input a stage width or the previous block's pruning
        narrowed gets the base's first ``channels`` channels (their ranges stand in for the
        candidate's, which only a whole built candidate has)."""
        if self.calib is None:
            raise ValueError("timing int8 blocks needs calibration images (calib)")
        if self._inputs is None:
            self._inputs = {}
            hooks = [self.base.get_submodule(b).register_forward_pre_hook(
                lambda _m, args, b=b: self._inputs.__setitem__(b, args[0].detach().cpu()))
                for b in self.costs.blocks]
            device = next(self.base.parameters()).device
            try:
                with torch.no_grad():
                    self.base.eval()(self.calib.to(device))
            finally:
                for h in hooks:
                    h.remove()
        return self._inputs[path][:, :channels]

    def measure(self, layout: Layout, progress: Callable[[int, int], None] | None = None
                ) -> int:
        """Measure every missing configuration of ``layout``; returns how many."""
        todo = self.missing(layout)
        m = self.m
        if todo and self.int8 and self.store is not None:
            self.store.put("settings", SCHEME_ENTRY, {"scheme": self.scheme}, save=False)
        for i, (path, value) in enumerate(todo):
            module, shape = self.module(path, value)
            lat = time_latency(module, shape, batch_size=m.batch_size, threads=m.threads,
                               runs=m.runs, warmup=m.warmup, runtime=m.runtime,
                               device=m.device,
                               calib=self.block_inputs(path, shape[0])
                               if self._inputs and path in self._inputs else None)
            key = self._key(path, value)
            self._ms[key] = lat.median_ms
            self.runtime = lat.runtime
            if self.store is not None:
                row = {"path": path, "value": value, "latency_ms": lat.median_ms,
                       "p90_ms": lat.p90_ms, "runtime": lat.runtime}
                self.store.put(SECTION, key, row, save=(i + 1) % 25 == 0 or i + 1 == len(todo))
            if progress:
                progress(i + 1, len(todo))
        return len(todo)

    # -- predicting ------------------------------------------------------------------------
    def block_ms(self, block: str, config: dict[str, Any]) -> float | None:
        """Measured latency of one block configuration (axis -> value; missing axes
        neutral), or None if not measured."""
        rt = self.m.runtime
        key = tuple(a.latency_key(config.get(a.name, a.neutral), rt) for a in self.block_axes())
        return self._get(block, key)

    def stage_ms(self, owner: str, axis: str, value: Any) -> float | None:
        """The latency change a stage-wide value makes, summed over the blocks it reaches
        (each timed with that value alone), or None if not measured."""
        total = 0.0
        for path, cfg in self._stage_configs_of(owner, axis, value):
            ms, ref = self._get(path, cfg), self.block_ms(path, {})
            if ms is None or ref is None:
                return None
            total += ms - ref
        return total

    def _stage_configs_of(self, owner: str, axis: str, value: Any) -> list[tuple[str, Any]]:
        key = ("stage", owner, axis, axes.get(axis).latency_key(value, self.m.runtime))
        out = []
        for r in self.costs.resizers:
            if r.unit == owner and r.axis == axis:
                out += [(b, key) for b in self.costs.blocks
                        if any(m == b or m.startswith(b + ".") for m, _k, _p in r.members)]
        return out

    def table(self, layout: Layout) -> CostTable:
        """``latency_ms`` as a :class:`CostTable` (NaN where a configuration is missing): the
        base, a factor per block over its block-wide axes, one per stage-wide column, one for
        the head."""
        base = self._get("", "base")
        factors = []
        names = [a.name for a in self.block_axes()]
        for i, b in enumerate(layout.blocks):
            cols = tuple(layout.column(b, n) for n in names)
            vals = [layout.values[i][layout.axes.index(n)] for n in names]
            ref = self.block_ms(b, {})
            arr = np.full(tuple(len(v) for v in vals), np.nan)
            for idx in product(*[range(len(v)) for v in vals]):
                ms = self.block_ms(b, {n: v[j] for n, v, j in zip(names, vals, idx, strict=True)})
                if ms is not None and ref is not None:
                    arr[idx] = ms - ref
            factors.append(Factor(cols, {"latency_ms": arr}))
            for a in axes.all_axes():
                if a.scope == "block":
                    continue
                vs = layout.values[i][layout.axes.index(a.name)]
                if len(vs) > 1:
                    arr1 = np.array([0.0 if v == a.neutral else np.nan if (
                        d := self.stage_ms(b, a.name, v)) is None else d for v in vs])
                    factors.append(Factor((layout.column(b, a.name),), {"latency_ms": arr1}))
        h0 = self._get(self.costs.head_name, KEEP)
        head = np.array([np.nan if (v := self._get(self.costs.head_name, h)) is None or h0 is None
                         else v - h0 for h in layout.head])
        factors.append(Factor((layout.n_columns - 1,), {"latency_ms": head}))
        return CostTable(layout, {"latency_ms": np.nan if base is None else base}, factors)


def _input_of(model: nn.Module, path: str, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input shape (batch 1) module ``path`` of ``model`` (on the meta device) receives."""
    from searchcomp.choices.probe import first_input

    got: list[tuple[int, ...]] = []
    h = model.get_submodule(path).register_forward_pre_hook(
        lambda _m, args: got.append(tuple(first_input(args).shape)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device="meta"))
    finally:
        h.remove()
    return got[0]


def latency_error(predicted: list[float], measured: list[float]) -> dict[str, float] | None:
    """How far predicted latencies are from measured ones: mean and largest absolute
    relative error, and the mean signed one (positive: the table over-predicts)."""
    pairs = [(p, m) for p, m in zip(predicted, measured, strict=True)
             if p is not None and m and np.isfinite(p)]
    if not pairs:
        return None
    rel = np.array([(p - m) / m for p, m in pairs])
    return {"trials": len(pairs), "mean_abs_rel": float(np.mean(np.abs(rel))),
            "max_abs_rel": float(np.max(np.abs(rel))), "mean_rel": float(np.mean(rel))}


class LatencyCalibration:
    """Maps the block table's latency to the measured one, learned from finished trials.

    Blocks timed one at a time keep their weights in cache; inside a whole model that is
    larger than the cache every forward pass streams the weights from memory, while a small
    compressed model fits and runs hot. So the measured latency is fitted as
    ``a * table + b * float MiB of the weights + c`` (non-negative least squares, scipy)
    once ``MIN_TRIALS`` trials are measured; before that the table is used as it is.
    """

    MIN_TRIALS = 4

    def __init__(self) -> None:
        self.coef: np.ndarray | None = None

    @staticmethod
    def _features(table_ms: np.ndarray, params: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(table_ms, float), np.asarray(params, float) * 4 / 2**20,
                         np.ones(len(np.atleast_1d(table_ms)))], axis=1)

    def fit(self, table_ms: np.ndarray, params: np.ndarray, measured: np.ndarray
            ) -> LatencyCalibration:
        """Fit on trials (their table prediction, params and measured latency)."""
        from scipy.optimize import nnls

        ok = np.isfinite(table_ms) & np.isfinite(measured)
        self.coef = None
        if ok.sum() >= self.MIN_TRIALS:
            self.coef, _ = nnls(self._features(table_ms[ok], params[ok]), measured[ok])
        return self

    def apply(self, table_ms: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The calibrated latency (the table's when not fitted)."""
        if self.coef is None:
            return np.asarray(table_ms, float)
        return self._features(table_ms, params) @ self.coef


def calibrated_error(table_ms: list[float], params: list[float], measured: list[float]
                     ) -> dict[str, float] | None:
    """:func:`latency_error` of the calibration, each trial predicted by a fit on the others
    (leave-one-out: no trial judges a fit it took part in)."""
    t, p, m = (np.asarray(v, float) for v in (table_ms, params, measured))
    if len(t) <= LatencyCalibration.MIN_TRIALS:
        return None
    pred = []
    for i in range(len(t)):
        keep = np.arange(len(t)) != i
        cal = LatencyCalibration().fit(t[keep], p[keep], m[keep])
        pred.append(float(cal.apply(t[i:i + 1], p[i:i + 1])[0]))
    return latency_error(pred, list(m))
