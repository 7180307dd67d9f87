"""One trial as a pure function: (context built from the config, recipe, seed) -> outcome.

No global state and no Optuna here, so the same function can run under any driver (the local
Optuna loop, the greedy baseline, a Ray worker).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchcomp.candidate import Built, Recipe, build
from searchcomp.choices.actquant import calibrate_activations
from searchcomp.config import Space
from searchcomp.errors import ChoiceError
from searchcomp.measure.intervals import accuracy_attrs
from searchcomp.search.context import CALIB_IMAGES, TrialContext, measure_model, prepare
from searchcomp.search.files import write_atomic
from searchcomp.search.locks import measuring
from searchcomp.train import DivergedError, evaluate, finetune

__all__ = ["CALIB_IMAGES", "METRICS", "TRIAL_FAILURES", "TrialContext", "TrialOutcome",
           "constraint_values", "prepare", "run_trial", "save_weights", "with_feasibility"]

METRICS = ("accuracy", "params", "size_mib", "latency_ms", "flops")
#: what a trial may raise as its own result — a combination that cannot be built, a loss
#: that diverged, out of memory: recorded with the reason, counted, never tried again. Any
#: other exception is a bug: the trial is failed (not counted) and the run stops with it.
TRIAL_FAILURES: tuple[type[BaseException], ...] = (
    ChoiceError, DivergedError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError)


@dataclass
class TrialOutcome:
    """What one trial measured; ``metrics`` holds every metric in :data:`METRICS`."""

    metrics: dict[str, Any]
    init_errors: dict[str, float]
    pruned: dict[str, Any]
    finetune_steps: int
    finetune_seconds: float
    weights: str
    #: each configured constraint's violation; <= 0 means satisfied (Optuna's convention)
    constraints: dict[str, float] = field(default_factory=dict)
    #: wall seconds of each phase: build (and its parts build.prune, build.replace with the
    #: inits and local fits, build.quantize), finetune, evaluate, measure, save
    phase_seconds: dict[str, float] = field(default_factory=dict)
    #: onnxruntime-int8: the int8 scheme its blocks at <= 8 bits simulate and its file uses
    int8_scheme: str | None = None

    @property
    def feasible(self) -> bool:
        """True when every constraint is met."""
        return all(c <= 0 for c in self.constraints.values())

    def to_attrs(self) -> dict[str, Any]:
        """Flat, JSON-friendly user attributes for the study."""
        d = asdict(self)
        metrics = d.pop("metrics")
        d.update(metrics)
        d["max_init_error"] = max(self.init_errors.values(), default=0.0)
        d["feasible"] = self.feasible
        return d


def constraint_values(space: Space, metrics: dict[str, Any], base: dict[str, Any]
                      ) -> dict[str, float]:
    """Violation of each configured constraint (<= 0: satisfied); costs relative to the
    limit, accuracy in accuracy points."""
    c = space.constraints
    out = {}
    if c.max_accuracy_drop is not None:
        out["max_accuracy_drop"] = (base["accuracy"] - metrics["accuracy"]) - c.max_accuracy_drop
    for limit, key in ((c.max_params, "params"), (c.max_size_mib, "size_mib"),
                       (c.max_latency_ms, "latency_ms")):
        if limit is not None:
            out[f"max_{key}"] = (metrics[key] - limit) / limit
    return out


def with_feasibility(row: dict[str, Any], space: Space, base: dict[str, Any],
                     ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """``row`` (a trial's metrics) with ``constraints`` and ``feasible`` computed again from
    its figures as they stand now: a quiet latency re-measurement or the mean of confirmation
    runs replaces the figure the trial was judged on. Constraints in ``ignore`` (e.g.
    ``max_latency_ms`` before the quiet figure is known) do not count against ``feasible``.
    Unchanged when a figure is missing."""
    needed = {"max_accuracy_drop": "accuracy", "max_params": "params",
              "max_size_mib": "size_mib", "max_latency_ms": "latency_ms"}
    limits = [k for k, v in space.constraints.model_dump().items() if v is not None]
    if any(row.get(needed[k]) is None for k in limits) or (
            "max_accuracy_drop" in limits and base.get("accuracy") is None):
        return row
    values = constraint_values(space, row, base)
    ok = all(v <= 0 for k, v in values.items() if k not in ignore)
    return {**row, "constraints": values, "feasible": ok}


def run_trial(ctx: TrialContext, recipe: Recipe, seed: int, trial_id: str,
              on_step: Callable[[int, int, float | None], None] | None = None,
              start: tuple[nn.Module, Recipe] | None = None,
              prebuilt: tuple[Built, torch.Tensor] | None = None) -> TrialOutcome:
    """Build the candidate of ``recipe``, fine-tune it, score it on validation, save it.

    ``start``: (a model, the recipe it already is) to build from instead of the base, with
    its weights kept (the cumulative greedy carries each kept step's fine-tuned model on);
    only the changes ``recipe`` makes on top of it are applied. The teacher stays the base.
    ``prebuilt``: (the candidate ``build`` made of ``recipe`` with this ``seed``, the torch RNG
    state right after that build), to fine-tune a copy of instead of building again; the
    outcome is the same.

    Raises :class:`searchcomp.train.BelowFloor` when the early-stop floor is missed,
    :class:`searchcomp.errors.ChoiceError` for an impossible combination and
    :class:`searchcomp.train.DivergedError` for a NaN loss.
    """
    space = ctx.space
    int8 = ctx.int8_scheme  # None in float runtimes
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] = now - clock
        clock = now

    torch.manual_seed(seed)
    if prebuilt is not None:
        built = dataclasses.replace(prebuilt[0], model=copy.deepcopy(prebuilt[0].model))
        torch.set_rng_state(prebuilt[1])
    else:
        origin, change = (ctx.base, recipe) if start is None else (
            start[0], changes_on_top(recipe, start[1]))
        built = build(origin, change, ctx.blocks, ctx.head_name, ctx.calib,
                      prune_criterion=space.finetune.prune_criterion,
                      grad_batches=ctx.grad_batches,
                      prune_round_to=space.blocks.prune_round_to, int8=int8)
    model = built.model
    lap("build")
    seconds.update({f"build.{k}": v for k, v in built.seconds.items()})
    train = ctx.splits.train.reseeded(seed)  # each trial its own, reproducible, shuffling
    ft = finetune(model, ctx.base, train, ctx.splits.val, space.finetune, on_step=on_step,
                  compute=ctx.compute, teacher_logits=ctx.teacher_logits)
    # the int8 ranges of the fine-tuned weights, from the images the exporter calibrates on
    calibrate_activations(model, ctx.calib)
    lap("finetune")
    accuracy = evaluate(model, ctx.splits.val, ctx.compute)
    lap("evaluate")
    model.to(ctx.measure_device)  # trained: from here on it is the model to deploy
    with measuring(ctx.weights_dir.parent):  # one latency measurement at a time per machine
        metrics = {"accuracy": accuracy, **accuracy_attrs(accuracy, ctx.splits.val.size),
                   **measure_model(model, space, ctx.measure_device, ctx.calib)}
    lap("measure")
    weights = save_weights(model, ctx.weights_dir / f"{trial_id}.pt")
    lap("save")
    return TrialOutcome(metrics, built.init_errors,
                        {b: {c: list(v) for c, v in d.items()} for b, d in built.pruned.items()},
                        ft.steps, ft.seconds, str(weights),
                        constraint_values(space, metrics, ctx.base_metrics), seconds,
                        int8.name if int8 is not None else None)


def changes_on_top(recipe: Recipe, start: Recipe) -> Recipe:
    """The changes that turn a model already built as ``start`` into ``recipe``; each must
    change a choice ``start`` left neutral (a built change cannot be undone)."""
    from searchcomp.choices import axes
    from searchcomp.config import KEEP

    blocks: dict[str, dict] = {}
    for b in {*recipe.blocks, *start.blocks}:
        for c in axes.names():
            want, have = recipe.choice(b, c), start.choice(b, c)
            if want == have:
                continue
            if have != axes.neutral(c):
                raise ChoiceError(f"cannot build {b} {c}={want!r} on a model that already has "
                                  f"{c}={have!r} there")
            blocks.setdefault(b, {})[c] = want
    if recipe.head != start.head and start.head != KEEP:
        raise ChoiceError(f"cannot change the head {start.head!r} to {recipe.head!r} on a built "
                          "model")
    return Recipe(blocks, recipe.head if recipe.head != start.head else KEEP)


def save_weights(model: nn.Module, path: Path) -> Path:
    """Write the fine-tuned state (whole or not at all) so export needs no retraining; a
    disk that refuses it raises :class:`searchcomp.errors.OutputError`."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return write_atomic(path, lambda tmp: torch.save(state, tmp), "trial weights")
