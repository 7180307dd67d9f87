"""One trial as a pure function: (context built from the config, recipe, seed) -> outcome.

No global state and no Optuna here, so the same function can run under any driver (the local
Optuna loop, the greedy baseline, a Ray worker).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchcomp.candidate import Recipe, build
from searchcomp.config import Space
from searchcomp.data import Splits, load_splits
from searchcomp.measure import measure
from searchcomp.models import Block, find_blocks, find_head, input_shape, obtain_base
from searchcomp.train import evaluate, finetune

METRICS = ("accuracy", "params", "size_mib", "latency_ms", "flops")
#: images whose activations drive local fits and init errors (more costs build time)
CALIB_IMAGES = 64


@dataclass
class TrialContext:
    """Everything a trial needs, derived deterministically from the space."""

    space: Space
    base: nn.Module
    base_metrics: dict[str, Any]
    splits: Splits
    blocks: list[Block]
    head_name: str
    calib: torch.Tensor
    grad_batches: list[tuple[torch.Tensor, torch.Tensor]]
    weights_dir: Path

    @property
    def block_names(self) -> list[str]:
        """Block names in model order."""
        return [b.name for b in self.blocks]


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


def prepare(space: Space, *, progress: bool = True, log: Callable[[str], None] = print,
            study_name: str | None = None) -> TrialContext:
    """Load data, obtain the base, find the blocks and measure the base: the reference point."""
    splits = load_splits(space.data, space.model)
    base = obtain_base(space, splits, progress=progress, log=log)
    blocks = find_blocks(base.model, space)
    head_name, _ = find_head(base.model, space)
    n_calib = space.finetune.calib_batches
    grad_batches = []
    # a fresh copy: the base's training advanced the shared one's epoch (cached or not)
    for i, batch in enumerate(splits.train.reseeded(space.data.seed)):
        if i >= n_calib:
            break
        grad_batches.append(batch)
    calib = torch.cat([x for x, _ in grad_batches])[:CALIB_IMAGES]
    mm = space.measure
    met = measure(base.model, input_shape(space.model), batch_size=mm.batch_size,
                  threads=mm.threads, runs=mm.runs, warmup=mm.warmup, runtime=mm.runtime)
    base_metrics = {"accuracy": base.val_accuracy, "params": met.params,
                    "size_mib": met.size_mib, "latency_ms": met.latency_ms, "flops": met.flops,
                    "latency_runtime": met.latency_runtime}
    weights_dir = Path(space.studies_dir) / (study_name or space.name) / "trials"
    return TrialContext(space, base.model, base_metrics, splits, blocks, head_name, calib,
                        grad_batches, weights_dir)


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


def run_trial(ctx: TrialContext, recipe: Recipe, seed: int, trial_id: str,
              on_step: Callable[[int, int, float], None] | None = None,
              start: tuple[nn.Module, Recipe] | None = None) -> TrialOutcome:
    """Build the candidate of ``recipe``, fine-tune it, score it on validation, save it.

    ``start``: (a model, the recipe it already is) to build from instead of the base, with
    its weights kept (the cumulative greedy carries each kept step's fine-tuned model on);
    only the changes ``recipe`` makes on top of it are applied. The teacher stays the base.

    Raises :class:`searchcomp.train.BelowFloor` when the early-stop floor is missed,
    :class:`searchcomp.errors.ChoiceError` for an impossible combination and
    :class:`searchcomp.train.DivergedError` for a NaN loss.
    """
    space = ctx.space
    torch.manual_seed(seed)
    origin, change = (ctx.base, recipe) if start is None else (start[0],
                                                              changes_on_top(recipe, start[1]))
    built = build(origin, change, ctx.blocks, ctx.head_name, ctx.calib,
                  prune_criterion=space.finetune.prune_criterion,
                  grad_batches=ctx.grad_batches, prune_round_to=space.blocks.prune_round_to)
    model = built.model
    train = ctx.splits.train.reseeded(seed)  # each trial its own, reproducible, shuffling
    ft = finetune(model, ctx.base, train, ctx.splits.val, space.finetune, on_step=on_step)
    accuracy = evaluate(model, ctx.splits.val)
    mm = space.measure
    met = measure(model, input_shape(space.model), batch_size=mm.batch_size, threads=mm.threads,
                  runs=mm.runs, warmup=mm.warmup, runtime=mm.runtime)
    metrics = {"accuracy": accuracy, "params": met.params, "size_mib": met.size_mib,
               "latency_ms": met.latency_ms, "flops": met.flops,
               "latency_runtime": met.latency_runtime}
    weights = save_weights(model, ctx.weights_dir / f"{trial_id}.pt")
    return TrialOutcome(metrics, built.init_errors,
                        {b: {c: list(v) for c, v in d.items()} for b, d in built.pruned.items()},
                        ft.steps, ft.seconds, str(weights),
                        constraint_values(space, metrics, ctx.base_metrics))


def changes_on_top(recipe: Recipe, start: Recipe) -> Recipe:
    """The changes that turn a model already built as ``start`` into ``recipe``; each must
    change a choice ``start`` left neutral (a built change cannot be undone)."""
    from searchcomp.config import CHOICES, KEEP, NEUTRAL
    from searchcomp.errors import ChoiceError

    blocks: dict[str, dict] = {}
    for b in {*recipe.blocks, *start.blocks}:
        for c in CHOICES:
            want, have = recipe.choice(b, c), start.choice(b, c)
            if want == have:
                continue
            if have != NEUTRAL[c]:
                raise ChoiceError(f"cannot build {b} {c}={want!r} on a model that already has "
                                  f"{c}={have!r} there")
            blocks.setdefault(b, {})[c] = want
    if recipe.head != start.head and start.head != KEEP:
        raise ChoiceError(f"cannot change the head {start.head!r} to {recipe.head!r} on a built "
                          "model")
    return Recipe(blocks, recipe.head if recipe.head != start.head else KEEP)


def save_weights(model: nn.Module, path: Path) -> Path:
    """Write the fine-tuned state (atomically) so export needs no retraining."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.{time.monotonic_ns()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return path
