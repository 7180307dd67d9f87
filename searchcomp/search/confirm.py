"""Confirmation runs: each front point fine-tuned K more times with new seeds.

A front collects the trials that did best, so on noisy figures it collects lucky ones. A
confirmation run builds the same recipe from the base and fine-tunes it again with another
seed; the mean and spread over the original and its runs say how much of a point's accuracy
is the recipe and how much the draw (:mod:`searchcomp.results.study` shows them).

Each run is a trial of the study (``strategy`` ``confirm``, user attributes ``confirm_of``:
the front trial, ``confirm_run``: 1..K), created RUNNING with the front trial's choices, kept
alive by the heartbeat while it fine-tunes, and told like any other, so the dashboard shows
it. It is never counted toward ``--trials`` nor answered from (:func:`~.states.is_repeat`);
a rerun makes only the runs still missing (one that died is failed by the heartbeat check and
made again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

from searchcomp.candidate import Recipe
from searchcomp.errors import OutputError
from searchcomp.search.lease import Heartbeat, beat, fail_stale_trials, worker_name
from searchcomp.search.locks import computing
from searchcomp.search.runner import bug_reason, weights_name
from searchcomp.search.samplers import derive_seed
from searchcomp.search.states import (
    CONFIRM_OF,
    CONFIRM_RUN,
    COUNTED,
    STOPPED_REASON,
    is_finished,
)
from searchcomp.search.storage import storage_of, study_id, trial_id
from searchcomp.search.trial import TRIAL_FAILURES, TrialContext, run_trial
from searchcomp.train import BelowFloor

#: the seed stream of confirmation runs (apart from the search's trial seeds)
SEED_STREAM = 1_000_003


def confirm_seed(original: FrozenTrial, run: int) -> int:
    """The fine-tune seed of confirmation run ``run`` (1..K) of ``original``: new, and the
    same on every rerun."""
    seed = int(original.user_attrs.get("seed", original.number))
    return derive_seed(seed, SEED_STREAM + original.number, run)


def confirmation_runs(trials: list[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """The confirmation trials of a study by the number of the trial they confirm."""
    out: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        of = t.user_attrs.get(CONFIRM_OF)
        if of is not None:
            out.setdefault(int(of), []).append(t)
    return out


def _has_run(runs: list[FrozenTrial], k: int) -> bool:
    """Run ``k`` is finished for good, or running in a live process."""
    return any(t.user_attrs.get(CONFIRM_RUN) == k
               and (is_finished(t) or t.state == TrialState.RUNNING) for t in runs)


def missing_runs(study: optuna.Study, numbers: list[int], runs: int) -> list[tuple[int, int]]:
    """(front trial, run) pairs still to be made for ``runs`` confirmations of each trial."""
    have = confirmation_runs(study.get_trials(deepcopy=False))
    return [(n, k) for n in numbers for k in range(1, runs + 1)
            if not _has_run(have.get(n, []), k)]


def _create(study: optuna.Study, original: FrozenTrial, k: int) -> Trial:
    """A RUNNING trial with the choices of ``original``, linked to it."""
    template = create_trial(
        state=TrialState.RUNNING, params=dict(original.params),
        distributions=dict(original.distributions),
        user_attrs={CONFIRM_OF: original.number, CONFIRM_RUN: k, "strategy": "confirm",
                    "seed": confirm_seed(original, k)})
    storage = storage_of(study)
    tid = storage.create_new_trial(study_id(study), template_trial=template)
    beat(storage, tid, worker_name())
    return Trial(study, tid)


def confirm_trials(ctx: TrialContext, study: optuna.Study, numbers: list[int], runs: int, *,
                   lock: Callable[[], Any], log: Callable[[str], None] = print,
                   on_step: Callable[[int, int, float | None], None] | None = None) -> int:
    """Make the missing confirmation runs of trials ``numbers`` (``runs`` each); returns how
    many ran now. Ctrl-C records the run as failed and not counted (a rerun makes it again)."""
    objectives = list(ctx.space.objectives)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    heartbeat_s = float(ctx.space.search.heartbeat_s)
    fail_stale_trials(study, heartbeat_s, log=log)
    todo = missing_runs(study, numbers, runs)
    if not todo:
        return 0
    log(f"confirm: {len(todo)} run(s) to make ({runs} per front point, "
        f"{len(numbers) * runs - len(todo)} already made); each fine-tunes like a trial")
    ran = 0
    with Heartbeat(storage_of(study), heartbeat_s) as hb:
        for i, (number, k) in enumerate(todo, 1):
            original = by_number[number]
            with lock():  # another process may have made it meanwhile
                if (number, k) not in missing_runs(study, [number], k):
                    continue
                trial = _create(study, original, k)
            tid = trial_id(study, trial.number)
            hb.add(tid)
            t0 = time.perf_counter()
            try:
                values, state = _run(ctx, trial, original, k, objectives, on_step)
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); run again")
                study.tell(trial, None, state=TrialState.FAIL)
                raise
            except OutputError as e:
                trial.set_user_attr("fail_reason", str(e)[:2000])
                study.tell(trial, None, state=TrialState.FAIL)
                raise
            except Exception as e:  # a bug: the run is failed, not counted, and we stop
                trial.set_user_attr("fail_reason", bug_reason(e))
                study.tell(trial, None, state=TrialState.FAIL)
                raise
            finally:
                hb.remove(tid)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            study.tell(trial, values, state=state)
            ran += 1
            acc = f"acc {values[objectives.index('accuracy')]:.4f}" if values and \
                "accuracy" in objectives else state.name.lower()
            log(f"confirm {i}/{len(todo)}: trial {trial.number} = run {k} of trial {number} "
                f"(original acc {float(original.user_attrs.get('accuracy', float('nan'))):.4f})"
                f": {acc} in {time.perf_counter() - t0:.0f} s")
    return ran


def _run(ctx: TrialContext, trial: Trial, original: FrozenTrial, k: int,
         objectives: list[str], on_step: Callable[[int, int, float | None], None] | None
         ) -> tuple[tuple[float, ...] | None, TrialState]:
    """Fine-tune and measure the recipe once more; the values to tell and the state."""
    recipe = Recipe.from_dict(original.user_attrs["recipe"])
    trial.set_user_attr("recipe", recipe.to_dict())
    trial.set_user_attr("summary", original.user_attrs.get("summary"))
    try:
        with computing(ctx.weights_dir.parent):
            outcome = run_trial(ctx, recipe, confirm_seed(original, k),
                                weights_name(trial.number), on_step=on_step)
    except BelowFloor as e:
        trial.set_user_attr(STOPPED_REASON, str(e))
        trial.set_user_attr("accuracy_at_check", e.accuracy)
        return None, TrialState.PRUNED
    except OutputError:
        raise
    except TRIAL_FAILURES as e:  # the run's own result (a NaN loss, ...): recorded, not repeated
        trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
        trial.set_user_attr(COUNTED, True)
        return None, TrialState.FAIL
    for key, v in outcome.to_attrs().items():
        trial.set_user_attr(key, v)
    for key, v in outcome.constraints.items():
        trial.set_constraint(key, float(v))
    return tuple(float(outcome.metrics[o]) for o in objectives), TrialState.COMPLETE
