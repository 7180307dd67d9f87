"""The local search loop: Optuna asks for choices, a trial builds, fine-tunes and scores them.

The loop uses Optuna's ask/tell: under the study lock (:mod:`searchcomp.search.locks`) a worker
checks the quota — trials done plus trials running anywhere — and only then creates a trial and
stores its choices, so workers never create placeholder trials and never start the same
choices twice. While a trial runs, a heartbeat (:mod:`searchcomp.search.lease`) marks it alive;
a worker waiting for trials of others fails the ones whose process died.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import Trial, TrialState

from searchcomp.candidate import Recipe
from searchcomp.errors import OutputError
from searchcomp.search.front import pareto_front
from searchcomp.search.lease import Heartbeat, beat, fail_stale_trials, worker_name
from searchcomp.search.locks import computing
from searchcomp.search.params import (
    block_params,
    param_name,
    recipe_params,
    recipe_space,
    record_prediction,
    sample_recipe,
)
from searchcomp.search.progress import Progress, format_line
from searchcomp.search.rungs import StoppedAtRung, climb, full_steps, spent_equivalents
from searchcomp.search.samplers import space_exhausted, space_size
from searchcomp.search.shared import CoreShare
from searchcomp.search.states import (
    COUNTED,
    DUPLICATE_OF,
    SKIPPED,
    STOPPED_REASON,
    is_done,
    is_repeat,
    is_running_search,
)
from searchcomp.search.storage import frozen, storage_of, trial_id
from searchcomp.search.study import done_trials, trial_row
from searchcomp.search.trial import TRIAL_FAILURES, TrialContext, run_trial
from searchcomp.train import BelowFloor, total_steps

__all__ = ["Progress", "Searcher", "block_params", "format_line", "param_name",
           "recipe_params", "recipe_space", "sample_recipe", "weights_name"]

#: failures that are a trial's own result (an impossible combination, a NaN loss, out of
#: memory): recorded with the reason, then the search goes on; anything else is a bug
TRIAL_ERRORS = TRIAL_FAILURES
#: seconds between looks at the study while the quota is filled by trials of other workers
POLL_S = 5.0
#: attributes a duplicate does not copy from the trial it is answered from
OWN_ATTRS = ("strategy", "tag", "greedy_step", "greedy_block", "greedy_pass", "greedy_form",
             "retry_of", "confirm_of", "confirm_run")


def bug_reason(e: BaseException) -> str:
    """The ``fail_reason`` of a trial that stopped the run on an unexpected error."""
    return (f"{type(e).__name__}: {e} (not a trial failure but a bug: the run stopped with "
            "its traceback; not counted, so a rerun tries these choices again)")[:2000]


def weights_name(number: int) -> str:
    """File stem of a trial's weights: its number, plus a random part so that studies of the
    same name in different storages never overwrite each other's files."""
    import uuid

    return f"{number:05d}-{uuid.uuid4().hex[:8]}"


def _no_lock() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


class Searcher:
    """Runs trials of one study against one prepared context.

    ``lock`` is the study's cross-process lock (:class:`searchcomp.search.locks.StudyLock`);
    without it the quota check and the trial creation are atomic within this process only.
    """

    def __init__(self, ctx: TrialContext, study: optuna.Study, *, seed: int = 0,
                 quiet: bool = False, strategy: str = "search",
                 lock: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.ctx, self.study, self.seed, self.quiet = ctx, study, seed, quiet
        self.strategy = strategy
        self.lock = lock or _no_lock
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.objectives = list(ctx.space.objectives)
        self.space = recipe_space(ctx.blocks, ctx.space.blocks.head)
        self.heartbeat_s = float(ctx.space.search.heartbeat_s)
        self.progress: Progress | None = None
        self.on_result: Callable[[dict[str, Any]], None] | None = None
        #: why the last :meth:`run` stopped early ("exhausted", "timeout", "attempts") or None
        self.stopped: str | None = None
        self._outcome = "ran"
        self._heartbeat: Heartbeat | None = None
        #: a trial -> (model, its recipe) to build that trial from instead of the base (the
        #: cumulative greedy), or None; such a trial never reuses another's result
        self.start_from: Callable[[Trial], tuple[Any, Recipe] | None] | None = None

    # -- one trial ---------------------------------------------------------------------------
    def objective(self, trial: Trial) -> tuple[float, ...]:
        """Optuna objective: sample, run, store everything the dashboard and export need."""
        ctx = self.ctx
        self._outcome = "ran"
        recipe = sample_recipe(trial, ctx.blocks, ctx.space.blocks.head)
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_user_attr("summary", recipe.summary(ctx.block_names, ctx.axes))
        trial.set_user_attr("strategy", trial.user_attrs.get("strategy", self.strategy))
        start = self.start_from(trial) if self.start_from else None
        same = self._same_recipe(trial) if start is None else None
        if same is not None:  # a queued copy of a finished trial: a fine-tune is too dear
            for k, v in same.user_attrs.items():
                if k not in OWN_ATTRS:
                    trial.set_user_attr(k, v)
            trial.set_user_attr(DUPLICATE_OF, same.number)
            for k, v in same.constraints.items():
                trial.set_constraint(k, float(v))
            self._outcome = "duplicate"
            return tuple(float(same.user_attrs[o]) for o in self.objectives)
        if self._running_twin(trial):
            # only without a study lock can another worker have started these very choices
            trial.set_user_attr(SKIPPED, True)
            self._outcome = "skipped"
            raise optuna.TrialPruned("skipped: another worker runs the same choices")
        if self.progress:
            self.progress.start_trial(trial.number, total_steps(ctx.space.finetune,
                                                                ctx.splits.train))
        t0 = time.perf_counter()
        try:
            trial.set_user_attr("seed", self.seed + trial.number)
            with computing(ctx.weights_dir.parent):
                if self.strategy == "rungs" and start is None:
                    outcome = climb(ctx, self.study, trial, recipe, self.seed + trial.number,
                                    weights_name(trial.number), self.progress)
                else:
                    outcome = run_trial(ctx, recipe, self.seed + trial.number,
                                        weights_name(trial.number),
                                        on_step=self.progress.step if self.progress else None,
                                        start=start)
        except StoppedAtRung as e:
            trial.set_user_attr(STOPPED_REASON, str(e))
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            raise optuna.TrialPruned(str(e)) from None
        except BelowFloor as e:
            trial.set_user_attr(STOPPED_REASON, str(e))
            trial.set_user_attr("accuracy_at_check", e.accuracy)
            raise optuna.TrialPruned(str(e)) from None
        except OutputError:
            raise  # the disk's fault, not the candidate's: the search stops
        except TRIAL_ERRORS as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
            trial.set_user_attr(COUNTED, True)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            raise
        for k, v in outcome.to_attrs().items():
            trial.set_user_attr(k, v)
        for k, v in outcome.constraints.items():
            trial.set_constraint(k, float(v))
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        return tuple(float(outcome.metrics[o]) for o in self.objectives)

    def _running_twin(self, trial: Trial) -> bool:
        return any(t.number != trial.number and t.params == trial.params
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def _same_recipe(self, trial: Trial) -> optuna.trial.FrozenTrial | None:
        """A completed, original trial of this study with exactly the same choices, if any."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if (t.number != trial.number and t.params == trial.params
                    and not is_repeat(t.user_attrs)
                    and all(o in t.user_attrs for o in self.objectives)):
                return t
        return None

    def execute(self, trial: Trial) -> str:
        """Run ``trial`` (already created) and tell the study; returns ``"ran"``,
        ``"duplicate"`` (answered from a finished trial) or ``"skipped"``. Raises
        :class:`OutputError` (the search must stop) and ``KeyboardInterrupt`` after
        recording the trial as failed and not counted."""
        with contextlib.ExitStack() as stack:
            hb = self._heartbeat or stack.enter_context(
                Heartbeat(storage_of(self.study), self.heartbeat_s))
            tid = trial_id(self.study, trial.number)
            hb.add(tid)
            stack.callback(hb.remove, tid)
            values, state = None, TrialState.COMPLETE
            try:
                values = self.objective(trial)
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except OutputError as e:
                trial.set_user_attr("fail_reason", str(e)[:2000])
                self._tell(trial, None, TrialState.FAIL)
                raise
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); run again")
                self._tell(trial, None, TrialState.FAIL)
                raise
            except TRIAL_ERRORS:
                state = TrialState.FAIL
            except Exception as e:  # a bug: not the candidate's result; the run stops on it
                trial.set_user_attr("fail_reason", bug_reason(e))
                self._tell(trial, None, TrialState.FAIL)
                raise
        self._tell(trial, values, state)
        gc.collect()
        return self._outcome

    def _tell(self, trial: Trial, values: tuple[float, ...] | None, state: TrialState) -> None:
        try:
            self.study.tell(trial, values if state == TrialState.COMPLETE else None,
                            state=state)
        except UpdateFinishedTrialError:
            self.log(f"trial {trial.number}: another worker failed it as stale while it ran "
                     f"(no heartbeat for {2 * self.heartbeat_s:g} s); its result is dropped")
            return
        self._callback(self.study, frozen(self.study, trial.number))

    def _callback(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.user_attrs.get(SKIPPED) or (frozen.state == TrialState.FAIL
                                              and not frozen.user_attrs.get(COUNTED)):
            return
        row = trial_row(frozen, self.objectives)
        if self.progress:
            rows = [trial_row(t, self.objectives) for t in done_trials(study)
                    if t.state == TrialState.COMPLETE]
            self.progress.finished(format_line(row), len(pareto_front(rows, self.objectives)),
                                   counted=is_done(frozen))
        if self.on_result:
            self.on_result(row)

    def _ask(self) -> Trial:
        """Create a trial (the oldest queued one first) and store its choices."""
        trial = self.study.ask()
        beat(storage_of(self.study), trial_id(self.study, trial.number), worker_name())
        sample_recipe(trial, self.ctx.blocks, self.ctx.space.blocks.head)
        record_prediction(self.study, trial)
        return trial

    def claim(self, n_trials: int | None = None, budget: float | None = None
              ) -> tuple[Trial | None, str]:
        """Under the study lock: a new trial if the quota (done + running anywhere < N), the
        compute budget (full fine-tunes' worth of steps spent, running trials' so far
        included) and the space allow one. Returns (trial, "new"), or (None, why): "done",
        "budget", "full" (the rest runs elsewhere) or "exhausted" (every configuration is
        taken)."""
        with self.lock():
            trials = self.study.get_trials(deepcopy=False)
            if budget is not None and spent_equivalents(trials, full_steps(self.ctx)) >= budget:
                return None, "budget"
            if n_trials is not None:
                done = sum(1 for t in trials if is_done(t))
                if done >= n_trials:
                    return None, "done"
                running = sum(1 for t in trials if is_running_search(t))
                if done + running >= n_trials:
                    return None, "full"
            queued = any(t.state == TrialState.WAITING for t in trials)
            if not queued and space_exhausted(self.space, trials):
                return None, "exhausted"
            return self._ask(), "new"

    # -- the loop ----------------------------------------------------------------------------
    def open_progress(self, total: int | None, done: int = 0) -> None:
        """Show progress bars (or only summary lines when quiet) until :meth:`close_progress`."""
        self.progress = Progress(total, done, self.quiet)

    def close_progress(self) -> None:
        if self.progress:
            self.progress.close()
        self.progress = None

    def run_one(self, timeout: float | None = None) -> str:
        """Run one trial (the oldest queued one, else a sampled one); returns what
        :meth:`execute` returns, or ``"exhausted"``."""
        fail_stale_trials(self.study, self.heartbeat_s, log=self.log)
        trial, why = self.claim()
        return self.execute(trial) if trial is not None else why

    def run(self, n_trials: int, timeout: float | None = None,
            budget: float | None = None) -> int:
        """Run trials until ``n_trials`` distinct candidates are done in the study (resuming,
        with any number of workers), ``budget`` full fine-tunes' worth of steps are spent,
        the space is exhausted, or the timeout. Returns how many trials this call ran
        (answered duplicates and skipped slots are not runs)."""
        done = len(done_trials(self.study))
        todo = max(0, n_trials - done)
        self.stopped = None
        if todo == 0:
            return 0
        self.open_progress(n_trials, done)
        ran = attempts = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting_for: set[int] = set()
        # the context (base, data) and the libraries outlive the loop: keep them out of the
        # collection after each trial (a full one walks ~0.5 M objects, 0.5 s, otherwise)
        gc.collect()
        gc.freeze()
        try:
            with Heartbeat(storage_of(self.study), self.heartbeat_s) as hb, \
                    CoreShare(self.ctx.weights_dir.parent) as cores:
                self._heartbeat = hb
                # the bound stops a loop of trials that never count (answered duplicates,
                # trials whose process keeps dying)
                while attempts < 3 * todo + 10:
                    if deadline is not None and time.monotonic() >= deadline:
                        self.stopped = "timeout"
                        break
                    fail_stale_trials(self.study, self.heartbeat_s, log=self.log)
                    trial, why = self.claim(n_trials, budget)
                    if why == "done":
                        break
                    if why == "budget":
                        self.stopped = "budget"
                        self.log(f"the compute budget is spent: {budget:g} full fine-tune(s)' "
                                 "worth of steps; stopping")
                        break
                    if why == "exhausted":
                        self.stopped = "exhausted"
                        self.log(f"the search space is exhausted: all {space_size(self.space):,}"
                                 " configurations are done or running; stopping")
                        break
                    if trial is None:  # the rest of the quota runs in other workers
                        running = {t.number for t in self.study.get_trials(
                            deepcopy=False, states=(TrialState.RUNNING,))}
                        if running - waiting_for:
                            self.log(f"waiting for trial(s) {sorted(running)} running in other "
                                     f"workers (failed if silent for {2 * self.heartbeat_s:g} s)")
                        waiting_for = running
                        wait = min(POLL_S, self.heartbeat_s)
                        if deadline is not None:
                            wait = max(0.0, min(wait, deadline - time.monotonic()))
                        time.sleep(wait)
                        continue
                    attempts += 1
                    cores.apply()  # the local workers of the study split the cores
                    if self.execute(trial) == "ran":
                        ran += 1
                else:
                    self.stopped = "attempts"
        finally:
            self._heartbeat = None
            self.close_progress()
            gc.unfreeze()
        return ran

