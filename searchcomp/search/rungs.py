"""Multi-fidelity, multi-objective successive halving (``strategy: rungs``), one candidate per
trial and no barrier between them.

A candidate climbs rungs of increasing cost (:class:`RungPlan`): rung 0 is the candidate as
built (init, pruning, quantization, the runtime's int8 simulation) with its BatchNorm
statistics re-estimated on a few training batches and no gradient step; rung r fine-tunes it
``full / eta**(R - r)`` steps, rung R being the space's full fine-tune (exactly what a
``search`` trial does, same seed). Costs (params, MiB, FLOPs, latency) are measured once, at
rung 0: only accuracy depends on the rung.

After each rung below R the candidate is compared with every other candidate of the study
that has a result at that rung (:func:`promotion`): it goes on only if it ranks in the first
``ceil(n / eta)`` of the ``n`` by non-dominated sorting of (that rung's accuracy, the costs),
ties inside a front broken by hypervolume contribution. That is ASHA's rule (asynchronous
successive halving: a decision is taken as soon as the rung is scored, against whatever has
been scored so far, so several workers and Ray need no barrier) with Pareto ranks instead of
one metric, as in MOASHA. A stopped candidate ends as PRUNED with its reason, its rung results
and its costs; it is never a point of the front. Every rung's result is stored on the trial
as soon as it is known, so a retry of a killed trial skips the rungs its first attempt
finished.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from searchcomp.candidate import Recipe
from searchcomp.choices.actquant import calibrate_activations
from searchcomp.config import Space
from searchcomp.search.context import TrialContext, measure_model
from searchcomp.search.front import dominated_volume, dominates, normalized
from searchcomp.search.locks import measuring
from searchcomp.search.trial import TrialOutcome, run_trial
from searchcomp.train import evaluate, finetune, reestimate_bn, total_steps

#: user attributes of a trial of the rungs strategy
RUNG = "rung"  # the highest rung it reached
RUNG_ACCURACY = "rung_accuracy"  # {"0": acc, "1": acc, ...}
RUNG_COSTS = "rung_costs"  # the costs measured at rung 0
STEPS_SPENT = "finetune_steps_spent"  # fine-tune steps over all its rungs
RUNG_STEPS = "rung_steps"  # the plan's steps per rung


class StoppedAtRung(Exception):
    """A candidate ranked below the share of its rung that goes on."""

    def __init__(self, rung: int, reason: str) -> None:
        super().__init__(reason)
        self.rung = rung


@dataclass(frozen=True)
class RungPlan:
    """Fine-tune steps per rung (rung 0: none) and the promotion share ``1 / eta``."""

    steps: tuple[int, ...]
    eta: int
    bn_batches: int

    @property
    def last(self) -> int:
        """The full-fidelity rung."""
        return len(self.steps) - 1

    @classmethod
    def of(cls, space: Space, full_steps: int) -> RungPlan:
        """The plan of ``space`` (``search.rungs``) for a full fine-tune of ``full_steps``."""
        r = space.search.rungs
        return cls(rung_steps(full_steps, r.eta, r.count), r.eta, r.bn_batches)

    def describe(self) -> str:
        """``"rungs 0 / 13 / 40 fine-tune steps, the best 1/3 of each rung go on"``."""
        return (f"rungs {' / '.join(map(str, self.steps))} fine-tune steps (rung 0: BatchNorm "
                f"re-estimated, no step); the best 1/{self.eta} of each rung go on")


def rung_steps(full: int, eta: int, count: int) -> tuple[int, ...]:
    """``(0, full / eta**(count-1), ..., full)``, each rung at least one step more than the
    one before."""
    steps = [0]
    for r in range(1, count + 1):
        steps.append(max(steps[-1] + 1, round(full / eta ** (count - r))))
    steps[-1] = max(steps[-1], full)
    return tuple(steps)


def full_steps(ctx: TrialContext) -> int:
    """Steps of the space's full fine-tune."""
    return total_steps(ctx.space.finetune, ctx.splits.train)


# -- promotion: a pure function over rows --------------------------------------------------

def pareto_ranks(points: Sequence[tuple[float, ...]]) -> list[int]:
    """Non-dominated sorting: the front index of every point (0 = not dominated), all
    coordinates minimised."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    level = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in front:
            ranks[i] = level
        left -= front
        level += 1
    return ranks


def rank_order(rows: list[dict[str, Any]], objectives: Sequence[str],
               base: dict[str, Any]) -> list[int]:
    """Indices of ``rows`` best first: by Pareto front, then inside a front by the
    hypervolume each point alone adds to its front (largest first), then by accuracy."""
    pts = [normalized(r, objectives, base) for r in rows]
    ranks = pareto_ranks(pts)
    ref = tuple(1.0 + 1e-9 for _ in objectives)  # points at the base's cost still count
    contribution = []
    for i, p in enumerate(pts):
        same = [pts[j] for j in range(len(pts)) if ranks[j] == ranks[i]]
        without = [q for j, q in enumerate(same) if q is not p]
        contribution.append(dominated_volume(same, ref) - dominated_volume(without, ref))
    return sorted(range(len(rows)), key=lambda i: (ranks[i], -contribution[i],
                                                   -float(rows[i].get("accuracy", 0))))


def promotion(me: dict[str, Any], peers: list[dict[str, Any]], objectives: Sequence[str],
              base: dict[str, Any], eta: int) -> tuple[bool, str]:
    """Whether the candidate ``me`` (its accuracy at this rung and its costs) goes on to the
    next rung, against ``peers`` (every other candidate with a result at this rung), and why:
    it must rank among the first ``ceil(n / eta)`` of the ``n = len(peers) + 1``
    (:func:`rank_order`)."""
    rows = [me, *peers]
    order = rank_order(rows, objectives, base)
    position = order.index(0)
    keep = max(1, math.ceil(len(rows) / eta))
    ranks = pareto_ranks([normalized(r, objectives, base) for r in rows])
    where = (f"rank {position + 1} of {len(rows)} at this rung (Pareto front "
             f"{ranks[0] + 1}); the first {keep} go on")
    return position < keep, where


# -- one candidate through its rungs ------------------------------------------------------

def score_rung(ctx: TrialContext, model, rung: int, plan: RungPlan, seed: int,
               on_step: Callable[[int, int, float], None] | None = None) -> float:
    """Validation accuracy of the built ``model`` (left untouched) at ``rung``: BatchNorm
    re-estimated (rung 0) or fine-tuned ``plan.steps[rung]`` steps, then (in the int8
    runtime) its activations calibrated again."""
    space = ctx.space
    m = copy.deepcopy(model)
    train = ctx.splits.train.reseeded(seed)
    if rung == 0:
        m.to(ctx.compute.device)
        reestimate_bn(m, train, plan.bn_batches, ctx.compute)
    else:
        cfg = space.finetune.model_copy(update={"steps": plan.steps[rung], "epochs": 1.0,
                                                "min_accuracy": None})
        finetune(m, ctx.base, train, ctx.splits.val, cfg, on_step=on_step,
                 compute=ctx.compute, teacher_logits=ctx.teacher_logits)
    calibrate_activations(m, ctx.calib)
    return evaluate(m, ctx.splits.val, ctx.compute)


def run_rungs(ctx: TrialContext, recipe: Recipe, seed: int, trial_id: str, plan: RungPlan,
              peers: Callable[[int], list[dict[str, Any]]],
              record: Callable[[dict[str, Any]], None], *, anchor: bool = False,
              known: dict[str, Any] | None = None,
              on_step: Callable[[int, int, float], None] | None = None,
              on_rung: Callable[[int, float], None] | None = None) -> TrialOutcome:
    """Take ``recipe`` up the rungs of ``plan``; returns the full-fidelity outcome (what
    :func:`~searchcomp.search.trial.run_trial` returns), or raises :class:`StoppedAtRung`.

    ``peers(r)``: the other candidates' rows at rung r (accuracy and costs); ``record(attrs)``
    stores attributes on the trial as each rung finishes; ``anchor``: a baseline that goes to
    the last rung whatever its rank (rung 0 is still scored, for the fidelity statistics);
    ``known``: the rung results of an earlier attempt of the same trial (skipped here).
    """
    space = ctx.space
    known = dict(known or {})
    accuracy: dict[str, float] = dict(known.get(RUNG_ACCURACY) or {})
    costs: dict[str, Any] | None = known.get(RUNG_COSTS)
    spent = int(known.get(STEPS_SPENT) or 0)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    built = ctx.build(recipe)
    after_build = torch.get_rng_state()  # the full rung fine-tunes as a search trial would
    seconds["build"] = time.perf_counter() - t0
    if costs is None:
        t = time.perf_counter()
        with measuring(ctx.weights_dir.parent):
            measured = measure_model(copy.deepcopy(built.model).to(ctx.measure_device), space,
                                     ctx.measure_device, ctx.calib)
        costs = {k: measured[k] for k in ("params", "size_mib", "latency_ms", "flops")}
        seconds["measure"] = time.perf_counter() - t
    record({RUNG_COSTS: costs, RUNG_STEPS: list(plan.steps)})
    objectives = list(space.objectives)
    for rung in range(plan.last):
        if str(rung) not in accuracy:
            t = time.perf_counter()
            accuracy[str(rung)] = score_rung(ctx, built.model, rung, plan, seed, on_step)
            spent += plan.steps[rung]
            seconds[f"rung{rung}"] = time.perf_counter() - t
            record({RUNG_ACCURACY: dict(accuracy), STEPS_SPENT: spent, RUNG: rung})
        if on_rung:
            on_rung(rung, accuracy[str(rung)])
        if anchor:
            continue
        me = {**costs, "accuracy": accuracy[str(rung)]}
        go, why = promotion(me, peers(rung), objectives, ctx.base_metrics, plan.eta)
        if not go:
            raise StoppedAtRung(rung, f"stopped at rung {rung} of {plan.last} (val accuracy "
                                      f"{accuracy[str(rung)]:.4f} after "
                                      f"{_rung_what(plan, rung)}): {why}")
    outcome = run_trial(ctx, recipe, seed, trial_id, on_step=on_step,
                        prebuilt=(built, after_build))
    accuracy[str(plan.last)] = float(outcome.metrics["accuracy"])
    spent += plan.steps[plan.last]
    record({RUNG_ACCURACY: dict(accuracy), STEPS_SPENT: spent, RUNG: plan.last})
    outcome.phase_seconds.update({f"rungs.{k}": v for k, v in seconds.items()})
    return outcome


def climb(ctx: TrialContext, study, trial, recipe: Recipe, seed: int, trial_id: str,
          progress=None) -> TrialOutcome:
    """:func:`run_rungs` for an Optuna ``trial`` of ``study``: rung results stored on the
    trial as they come, peers read from the study, a seed or an anchor taken to the last rung
    whatever its rank, the rungs of an earlier attempt (kept by a re-queued trial) skipped."""
    plan = RungPlan.of(ctx.space, full_steps(ctx))

    def record(attrs: dict[str, Any]) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(k, v)

    def on_rung(rung: int, accuracy: float) -> None:
        if progress:
            progress.rung(trial.number, rung, plan.steps, accuracy)

    return run_rungs(ctx, recipe, seed, trial_id, plan,
                     lambda r: rung_rows(study.get_trials(deepcopy=False), r, trial.number),
                     record, anchor=trial.user_attrs.get("strategy") in ("seed", "anchor"),
                     known=trial.user_attrs, on_step=progress.step if progress else None,
                     on_rung=on_rung)


def _rung_what(plan: RungPlan, rung: int) -> str:
    return ("BatchNorm re-estimation, no fine-tune" if rung == 0
            else f"{plan.steps[rung]} fine-tune steps")


def rung_rows(trials, rung: int, exclude: int | None = None) -> list[dict[str, Any]]:
    """Rows (accuracy at ``rung`` and the rung-0 costs) of every trial with a result at
    ``rung``, but trial number ``exclude``."""
    rows = []
    for t in trials:
        a = t.user_attrs
        acc = (a.get(RUNG_ACCURACY) or {}).get(str(rung))
        if acc is None or t.number == exclude or not a.get(RUNG_COSTS):
            continue
        rows.append({**a[RUNG_COSTS], "accuracy": float(acc), "trial": t.number})
    return rows


def spent_equivalents(trials, full: int) -> float:
    """Full fine-tunes' worth of steps the trials spent (every rung and every strategy: a
    ``search`` trial's fine-tune counts whole), confirmation runs and answered duplicates
    aside."""
    from searchcomp.search.states import is_repeat

    steps = 0
    for t in trials:
        a = t.user_attrs
        if is_repeat(a):
            continue
        steps += int(a.get(STEPS_SPENT, a.get("finetune_steps", 0)) or 0)
    return steps / max(full, 1)


def full_accuracy_estimates(trials, min_pairs: int = 3) -> dict[int, float]:
    """For candidates stopped at a lower rung: their full-fidelity accuracy estimated from
    their last rung's, by a least-squares line fitted per rung on the trials that have both
    (``min_pairs`` at least; no estimate otherwise). What the surrogate learns from rungs."""
    import numpy as np

    pairs: dict[int, list[tuple[float, float]]] = {}
    top = 0
    for t in trials:
        a = t.user_attrs
        acc = a.get(RUNG_ACCURACY) or {}
        if t.state.name == "COMPLETE" and a.get(RUNG) is not None:
            top = max(top, int(a[RUNG]))
            full = acc.get(str(a[RUNG]))
            for r, v in acc.items():
                if int(r) < int(a[RUNG]) and full is not None:
                    pairs.setdefault(int(r), []).append((float(v), float(full)))
    lines = {}
    for r, pts in pairs.items():
        x, y = np.array(pts).T
        if len(pts) >= min_pairs and np.ptp(x) > 0:
            lines[r] = np.polyfit(x, y, 1)
    out = {}
    for t in trials:
        a = t.user_attrs
        if t.state.name != "PRUNED" or a.get(RUNG) is None:
            continue
        r = int(a[RUNG])
        v = (a.get(RUNG_ACCURACY) or {}).get(str(r))
        if r in lines and v is not None:
            out[t.number] = float(np.clip(np.polyval(lines[r], float(v)), 0.0, 1.0))
    return out
