"""The local search loop: Optuna asks for choices, a trial builds, fine-tunes and scores them."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from searchcomp.candidate import Recipe
from searchcomp.config import CHOICES, KEEP, NEUTRAL
from searchcomp.models import Block
from searchcomp.search.front import pareto_front
from searchcomp.search.study import (
    COUNTED,
    SKIPPED,
    STOPPED_REASON,
    done_trials,
    is_done,
    trial_row,
)
from searchcomp.search.trial import TrialContext, run_trial
from searchcomp.train import BelowFloor, total_steps

#: failures that are a trial's own result (an impossible combination, a NaN loss, out of
#: memory, a bug a choice triggers): recorded with the reason, then the search goes on
TRIAL_ERRORS = (Exception,)


def weights_name(number: int) -> str:
    """File stem of a trial's weights: its number, plus a random part so that studies of the
    same name in different storages never overwrite each other's files."""
    import uuid

    return f"{number:05d}-{uuid.uuid4().hex[:8]}"


def param_name(block: str, choice: str) -> str:
    """The Optuna parameter of a block's choice, e.g. ``layer1.0/conv``."""
    return f"{block}/{choice}"


def sample_recipe(trial: Trial, blocks: list[Block], head_values: tuple[str, ...]) -> Recipe:
    """Define-by-run: one categorical parameter per block and choice, and one for the head."""
    chosen = {}
    for b in blocks:
        chosen[b.name] = {c: trial.suggest_categorical(param_name(b.name, c),
                                                       list(getattr(b.choices, c)))
                          for c in CHOICES}
    head = trial.suggest_categorical("head", list(head_values))
    return Recipe(chosen, str(head))


def recipe_params(recipe: Recipe, blocks: list[Block], head_values: tuple[str, ...]
                  ) -> dict[str, Any]:
    """Optuna parameters that make :func:`sample_recipe` return ``recipe``.

    A value a block does not allow falls back to neutral (keep / 0 / 32) when that is
    allowed, else to the block's first value.
    """
    params: dict[str, Any] = {}
    for b in blocks:
        for c in CHOICES:
            allowed = list(getattr(b.choices, c))
            v = recipe.choice(b.name, c)
            if v not in allowed:
                v = NEUTRAL[c] if NEUTRAL[c] in allowed else allowed[0]
            params[param_name(b.name, c)] = v
    head = recipe.head if recipe.head in head_values else (
        KEEP if KEEP in head_values else head_values[0])
    params["head"] = head
    return params


class Progress:
    """A live bar of trials (done / total, ETA, front size) and one of the current fine-tune's
    steps, plus one summary line per finished trial. ``quiet`` keeps only the lines."""

    def __init__(self, total: int | None, done: int, quiet: bool, stream=None) -> None:
        from tqdm.auto import tqdm

        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.trials = tqdm(total=total, initial=done, desc="trials", unit="trial",
                           disable=quiet, file=self.stream, dynamic_ncols=True)
        self.steps = tqdm(total=1, desc="fine-tune", unit="step", disable=quiet, leave=False,
                          position=1, file=self.stream, dynamic_ncols=True)

    def start_trial(self, number: int, total_steps: int) -> None:
        self.steps.reset(total=total_steps)
        self.steps.set_description(f"trial {number} fine-tune")

    def step(self, step: int, total: int, loss: float) -> None:
        self.steps.update(1)
        if step % 5 == 0 or step == total:
            self.steps.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def finished(self, line: str, front_size: int) -> None:
        self.trials.update(1)
        self.trials.set_postfix(front=front_size)
        if self.quiet:
            print(line, file=self.stream, flush=True)
        else:
            self.trials.write(line, file=self.stream)

    def close(self) -> None:
        self.steps.close()
        self.trials.close()


def format_line(row: dict[str, Any]) -> str:
    """One line per finished trial for the log."""
    n, state = row["trial"], row["state"]
    if state != "complete":
        why = row.get("fail_reason") or row.get(STOPPED_REASON) or ""
        return f"trial {n:>4} {state:<8} {row.get('summary', '')}  {why}"
    feas = "" if row.get("feasible", True) else " (infeasible)"
    if row.get("duplicate_of") is not None:
        feas += f" (same choices as trial {row['duplicate_of']}: not run again)"
    return (f"trial {n:>4} acc {row['accuracy']:.4f}  params {row['params'] / 1e6:6.2f} M  "
            f"{row['size_mib']:7.2f} MiB  {row['latency_ms']:7.2f} ms  "
            f"{row.get('finetune_seconds', 0):5.1f} s  {row.get('summary', '')}{feas}")


class Searcher:
    """Runs trials of one study against one prepared context."""

    def __init__(self, ctx: TrialContext, study: optuna.Study, *, seed: int = 0,
                 quiet: bool = False, strategy: str = "search") -> None:
        self.ctx, self.study, self.seed, self.quiet = ctx, study, seed, quiet
        self.strategy = strategy
        self.objectives = list(ctx.space.objectives)
        self.progress: Progress | None = None
        self.on_result: Callable[[dict[str, Any]], None] | None = None
        #: the study's quota of done trials while :meth:`run` runs (several workers share it)
        self.target: int | None = None
        self.skipped = False
        #: a trial -> (model, its recipe) to build that trial from instead of the base (the
        #: cumulative greedy), or None; such a trial never reuses another's result
        self.start_from: Callable[[Trial], tuple[Any, Recipe] | None] | None = None

    # -- one trial ---------------------------------------------------------------------------
    def objective(self, trial: Trial) -> tuple[float, ...]:
        """Optuna objective: sample, run, store everything the dashboard and export need."""
        ctx = self.ctx
        if self.target is not None and self._ahead(trial) >= self.target:
            # other workers on this study already fill the quota: give the slot back
            trial.set_user_attr(SKIPPED, True)
            self.skipped = True
            raise optuna.TrialPruned("skipped: the study has enough trials done or running")
        recipe = sample_recipe(trial, ctx.blocks, ctx.space.blocks.head)
        trial.set_user_attr("recipe", recipe.to_dict())
        trial.set_user_attr("summary", recipe.summary(ctx.block_names))
        trial.set_user_attr("strategy", trial.user_attrs.get("strategy", self.strategy))
        if self._running_twin(trial):
            # another worker (same sampler seed) is running these very choices: give the slot
            # back; the sampler proposes something else next time
            trial.set_user_attr(SKIPPED, True)
            raise optuna.TrialPruned("skipped: another worker runs the same choices")
        start = self.start_from(trial) if self.start_from else None
        same = self._same_recipe(trial) if start is None else None
        if same is not None:  # samplers can repeat themselves; a fine-tune is too dear to redo
            for k, v in same.user_attrs.items():
                if k not in ("strategy", "tag", "greedy_step", "greedy_block", "greedy_pass"):
                    trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", same.number)
            for k, v in same.constraints.items():
                trial.set_constraint(k, float(v))
            return tuple(float(same.user_attrs[o]) for o in self.objectives)
        if self.progress:
            self.progress.start_trial(trial.number, total_steps(ctx.space.finetune,
                                                                ctx.splits.train))
        t0 = time.perf_counter()
        try:
            trial.set_user_attr("seed", self.seed + trial.number)
            outcome = run_trial(ctx, recipe, self.seed + trial.number, weights_name(trial.number),
                                on_step=self.progress.step if self.progress else None,
                                start=start)
        except BelowFloor as e:
            trial.set_user_attr(STOPPED_REASON, str(e))
            trial.set_user_attr("accuracy_at_check", e.accuracy)
            raise optuna.TrialPruned(str(e)) from None
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

    def _ahead(self, trial: Trial) -> int:
        """Trials created before this one that are done or still running (any worker)."""
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.number < trial.number and (is_done(t) or t.state == TrialState.RUNNING))

    def _running_twin(self, trial: Trial) -> bool:
        return any(t.number != trial.number and t.state == TrialState.RUNNING
                   and t.params == trial.params
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def _same_recipe(self, trial: Trial) -> optuna.trial.FrozenTrial | None:
        """A completed trial of this study with exactly the same choices, if any."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.number != trial.number and t.params == trial.params and all(
                    o in t.user_attrs for o in self.objectives):
                return t
        return None

    def _callback(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if frozen.user_attrs.get(SKIPPED):
            return
        row = trial_row(frozen, self.objectives)
        if self.progress:
            rows = [trial_row(t, self.objectives) for t in done_trials(study)
                    if t.state == TrialState.COMPLETE]
            self.progress.finished(format_line(row), len(pareto_front(rows, self.objectives)))
        if self.on_result:
            self.on_result(row)

    # -- the loop ----------------------------------------------------------------------------
    def open_progress(self, total: int | None, done: int = 0) -> None:
        """Show progress bars (or only summary lines when quiet) until :meth:`close_progress`."""
        self.progress = Progress(total, done, self.quiet)

    def close_progress(self) -> None:
        if self.progress:
            self.progress.close()
        self.progress = None

    def run_one(self, timeout: float | None = None) -> None:
        """Run one trial (the oldest queued one, else a sampled one)."""
        self.study.optimize(self.objective, n_trials=1, timeout=timeout, catch=TRIAL_ERRORS,
                            callbacks=[self._callback], gc_after_trial=True)

    def run(self, n_trials: int, timeout: float | None = None) -> int:
        """Run trials until ``n_trials`` are done in the study (resuming), or the timeout.
        Returns how many trials this call ran."""
        done = len(done_trials(self.study))
        todo = max(0, n_trials - done)
        if todo == 0:
            return 0
        self.open_progress(n_trials, done)
        self.target = n_trials
        ran = attempts = idle = 0
        last_running: set[int] = set()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # One optimize() call per trial: the number done is re-read each time, so trials
            # that fail for a reason count, interrupted or stale ones do not, and resume is
            # exact. The bound stops a loop of trials that never count.
            while attempts < 3 * todo + 10:
                if len(done_trials(self.study)) >= n_trials:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self.skipped = False
                self.run_one(left)
                if not self.skipped:
                    ran += 1
                    attempts += 1
                    continue
                # the quota is filled by trials running elsewhere: wait for them to finish,
                # or to be found dead (a trial silent for 2 heartbeats is failed and requeued)
                running = {t.number for t in self.study.get_trials(
                    deepcopy=False, states=(TrialState.RUNNING,))}
                idle = idle + 1 if running == last_running else 0
                last_running = running
                if idle >= 3 and not _has_heartbeat(self.study):
                    print(f"stopping: trial(s) {sorted(running)} stay RUNNING and this storage "
                          "has no heartbeat to tell a dead worker from a slow one; if no other "
                          "worker runs them, they were left by a killed process",
                          file=sys.stderr)
                    break
                time.sleep(self.ctx.space.search.heartbeat_s)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(self.study)
        finally:
            self.target = None
            self.close_progress()
        return ran


def _has_heartbeat(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def enqueue_seeds(study: optuna.Study, ctx: TrialContext) -> int:
    """Queue the base (every block ``keep``) and the space's uniform seed configurations
    that no done, queued or running trial of the study already has (so a seed interrupted
    by Ctrl-C is queued again). Returns how many were queued."""
    from searchcomp.candidate import uniform_recipe

    present = {tuple(sorted((t.params or t.system_attrs.get("fixed_params", {})).items()))
               for t in study.get_trials(deepcopy=False)
               if is_done(t) or t.state in (TrialState.WAITING, TrialState.RUNNING)}

    head_values = ctx.space.blocks.head
    seeds: list[tuple[str, Recipe]] = [("base", Recipe())]
    for cfg in ctx.space.search.seed_configs:
        cfg = dict(cfg)
        head = str(cfg.pop("head", KEEP))
        tag = "uniform " + " ".join(f"{k}={v}" for k, v in {**cfg, "head": head}.items()
                                    if not (k == "head" and v == KEEP))
        seeds.append((tag, uniform_recipe(ctx.blocks, head=head, **cfg)))
    seen = set()
    for tag, recipe in seeds:
        params = recipe_params(recipe, ctx.blocks, head_values)
        key = tuple(sorted(params.items()))
        if key in seen or key in present:
            continue
        seen.add(key)
        study.enqueue_trial(params, user_attrs={"strategy": "seed", "tag": tag})
    return len(seen)
