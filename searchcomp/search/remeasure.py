"""Quiet latency: the front's points measured again, one at a time, with no trial running.

A trial measures its latency while other trials of the study may be fine-tuning on the same
cores (other workers, Ray trials), so that figure can be many times the real one. At the end
of every run (and on ``searchcomp front --remeasure``) each front point is rebuilt from the
base, its recipe and its stored weights and measured again, sequentially, holding the
study folder's :func:`~searchcomp.search.locks.quiet` lock (no trial of the study runs on this
machine meanwhile). A point whose quiet figure moves the front brings new points in, which are
measured too, until every front point has a quiet figure. The base is measured again with
them, so the costs stay relative to the same conditions.

The figures are stored in the study's ``quiet_latency`` user attribute, ``{"base" or trial
number: {"latency_ms", "latency_runtime", "measured_at", "worker"}}`` (a finished trial cannot
be changed in Optuna); ``front`` and ``report`` show them and keep the in-trial figure as
``latency_in_trial_ms``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from searchcomp.candidate import Recipe
from searchcomp.config import Space
from searchcomp.search.context import measure_model
from searchcomp.search.front import pareto_front
from searchcomp.search.lease import worker_name
from searchcomp.search.locks import quiet
from searchcomp.search.states import is_repeat
from searchcomp.search.study import trial_row
from searchcomp.search.trial import TrialContext, with_feasibility

QUIET_KEY = "quiet_latency"
#: rounds of "measure the front, recompute it" before giving up on a moving front
MAX_ROUNDS = 5

Lock = Callable[[], contextlib.AbstractContextManager[None]]


def with_quiet(rows: list[dict[str, Any]], figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows whose latency is replaced by its quiet figure where there is one (the in-trial
    figure kept as ``latency_in_trial_ms``)."""
    out = []
    for r in rows:
        q = figures.get(str(r["trial"]))
        if q and "latency_ms" in r:
            r = {**r, "latency_in_trial_ms": r["latency_ms"], "latency_ms": q["latency_ms"],
                 "latency_runtime": q.get("latency_runtime", r.get("latency_runtime")),
                 "latency_quiet": True, "latency_in_trial_under_load": r.get("latency_under_load"),
                 **{k: q.get(k) for k in ("latency_p10_ms", "latency_p90_ms",
                                          "latency_under_load")}}
        out.append(r)
    return out


def original_rows(study: optuna.Study, objectives: list[str]) -> dict[int, dict[str, Any]]:
    """Complete trials that are not answered copies of another, as rows by trial number."""
    return {t.number: trial_row(t, objectives)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not is_repeat(t.user_attrs) and "latency_ms" in t.user_attrs}


def time_trial(ctx: TrialContext, frozen: FrozenTrial | dict[str, Any]) -> dict[str, Any]:
    """Rebuild a trial (base + recipe + stored weights, as export does) and measure it."""
    return _time(ctx, rebuild_trial(ctx, frozen))


def rebuild_trial(ctx: TrialContext, frozen: FrozenTrial | dict[str, Any]) -> torch.nn.Module:
    """A trial's network rebuilt from the base, its recipe and its stored weights (when the
    file is still there), in eval mode."""
    a = frozen.user_attrs if isinstance(frozen, FrozenTrial) else frozen
    torch.manual_seed(int(a.get("seed", 0)))
    built = ctx.build(Recipe.from_dict(a["recipe"]), init=False, int8=ctx.scheme_for(a))
    weights = Path(a.get("weights") or "")
    for p in (weights, ctx.weights_dir / weights.name):
        if weights.name and p.is_file():
            with contextlib.suppress(Exception):  # same latency with any weights of this shape
                built.model.load_state_dict(torch.load(p, map_location="cpu",
                                                       weights_only=True))
            break
    return built.model.eval()


def _time(ctx: TrialContext, model: torch.nn.Module) -> dict[str, Any]:
    met = measure_model(model, ctx.space, ctx.measure_device, ctx.calib)
    keys = ("latency_ms", "latency_runtime", "latency_p10_ms", "latency_p90_ms",
            "latency_under_load")
    return {**{k: met[k] for k in keys},
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "worker": worker_name()}


def time_points(ctx: TrialContext, points: list[dict[str, Any]], with_base: bool
                ) -> dict[str, dict[str, Any]]:
    """Measure ``points`` (each ``{"trial", "attrs"}``) and, optionally, the base, one after
    another while no trial of the study runs on this machine. What a Ray task runs too."""
    out: dict[str, dict[str, Any]] = {}
    with quiet(ctx.weights_dir.parent):
        if with_base:
            out["base"] = _time(ctx, ctx.base.eval())
        for p in points:
            out[str(p["trial"])] = time_trial(ctx, p["attrs"])
    return out


def remeasure_front(study: optuna.Study, space: Space, base: dict[str, Any],
                    measure_points: Callable[[list[dict[str, Any]], bool],
                                             dict[str, dict[str, Any]]],
                    lock: Lock | None = None, log: Callable[[str], None] = print) -> int:
    """Measure every front point again (quietly, see the module doc) and store the figures;
    ``measure_points(points, with_base)`` does the measuring (here, or as a Ray task). The
    front is that of the figures as they stand, feasibility included (a point the quiet
    figure brings under a latency limit joins it, so a point over the limit in its trial is
    measured too when it would be on the front; ``base``: the base's metrics).
    Returns how many trials were measured."""
    objectives = list(space.objectives)
    rows = original_rows(study, objectives)
    if not rows:
        return 0
    fresh: dict[str, dict[str, Any]] = {}
    attrs = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
    t0 = time.perf_counter()
    for _ in range(MAX_ROUNDS):
        # a point over the latency limit in its trial may be under it quietly: it counts
        # as feasible until its quiet figure says otherwise
        now = [with_feasibility(r, space, base, () if r.get("latency_quiet")
                                else ("max_latency_ms",))
               for r in with_quiet(list(rows.values()), fresh)]
        front = pareto_front(now, objectives)
        todo = [{"trial": r["trial"], "attrs": dict(attrs[r["trial"]])} for r in front
                if str(r["trial"]) not in fresh]
        if not todo:
            break
        fresh.update(measure_points(todo, "base" not in fresh))
    with (lock or contextlib.nullcontext)():
        stored = dict(study.user_attrs.get(QUIET_KEY) or {})
        stored.update(fresh)
        study.set_user_attr(QUIET_KEY, stored)
    moved = [f"{n}: {rows[int(n)]['latency_ms']:.2f} -> {q['latency_ms']:.2f}"
             for n, q in fresh.items() if n != "base"]
    log(f"latency of {len(moved)} front point(s) and the base measured again, quietly, in "
        f"{time.perf_counter() - t0:.0f} s (ms in trial -> quiet): " + ", ".join(moved))
    return len(moved)


def remeasure_here(ctx: TrialContext, study: optuna.Study, lock: Lock | None = None,
                   log: Callable[[str], None] = print) -> int:
    """:func:`remeasure_front` in this process."""
    return remeasure_front(study, ctx.space, ctx.base_metrics,
                           lambda pts, base: time_points(ctx, pts, base), lock, log)
