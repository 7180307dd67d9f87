"""Ray Tune backend: the same trial function as the local loop, run as Ray trials.

A Ray Tune ``Searcher`` asks the study itself for each trial (its sampler over the same
define-by-run space, its storage); when a Ray trial ends, its metrics and user attributes are
written onto that Optuna trial, so ``front``, ``report``, ``export`` and
``dashboard`` read a Ray study exactly like a local one.

The bookkeeping is the local loop's: each suggestion checks the quota under the study lock
before it creates a trial; the driver beats the heartbeat of every trial it has in flight (a
driver killed with its trials leaves them to be failed as stale by the next run); a trial
whose Ray worker dies is failed, not counted, and its choices queued again; the front's
latency is measured again as one Ray task after the trials.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from searchcomp.candidate import Recipe
from searchcomp.errors import OutputError, SearchcompError
from searchcomp.search.lease import (
    MAX_RETRIES,
    Heartbeat,
    count_retries,
    fail_stale_trials,
    requeue,
)
from searchcomp.search.ray_worker import (  # noqa: F401  (WorkerSpec: the API's)
    WorkerSpec,
    _context,
    _StoredTrial,
    _worker_study,
    worker_device,
)
from searchcomp.search.rungs import StoppedAtRung, full_steps, spent_equivalents
from searchcomp.search.runner import (
    bug_reason,
    format_line,
    record_prediction,
    sample_recipe,
    weights_name,
)
from searchcomp.search.samplers import space_exhausted
from searchcomp.search.states import is_running_search
from searchcomp.search.storage import frozen, storage_of, trial_id
from searchcomp.search.study import COUNTED, STOPPED_REASON, done_trials, is_done, trial_row
from searchcomp.search.trial import TRIAL_FAILURES, TrialContext

RESULT_KEY = "searchcomp"
#: key of a trial result that says the search must stop (a file could not be written)
FATAL = "fatal"
#: key of a trial result holding the traceback of a bug in the worker: the search stops
BUG = "bug"
#: seconds between two quota checks while the quota is filled by running trials
QUOTA_POLL_S = 1.0


def ray_trial(config: dict[str, Any], spec: WorkerSpec,
              known_base: dict[str, Any] | None = None) -> None:
    """The Ray trainable: rebuild the recipe from Ray's config, run the trial, report."""
    import ray
    import torch
    from ray import tune

    from searchcomp.search.locks import computing
    from searchcomp.search.trial import run_trial
    from searchcomp.train import BelowFloor

    torch.set_num_threads(spec.threads)
    number = int(config["_number"])
    blocks = {b: dict(v) for b, v in config.items() if isinstance(v, dict)}
    recipe = Recipe(blocks, str(config.get("head", "keep")))
    out: dict[str, Any] = {"recipe": recipe.to_dict(), "seed": spec.seed + number,
                           "started_at": time.time()}
    t0 = time.perf_counter()
    try:
        device = worker_device(spec, ray.get_gpu_ids())
        ctx = _context(spec, device, known_base)
        out["device"] = str(ctx.compute.device)
        out["summary"] = recipe.summary(ctx.block_names, ctx.axes)
        with computing(ctx.weights_dir.parent):
            if spec.strategy == "rungs":
                from searchcomp.search.rungs import climb

                study = _worker_study(spec, ctx)
                outcome = climb(ctx, study, _StoredTrial(study, number), recipe,
                                spec.seed + number, weights_name(number))
            else:
                outcome = run_trial(ctx, recipe, spec.seed + number, weights_name(number))
        out.update(outcome.to_attrs())
        metrics = {o: float(outcome.metrics[o]) for o in ctx.space.objectives}
    except StoppedAtRung as e:
        out.update({STOPPED_REASON: str(e)})
        metrics = {}
    except BelowFloor as e:
        out.update({STOPPED_REASON: str(e), "accuracy_at_check": e.accuracy})
        metrics = {}
    except OutputError as e:  # the disk's fault: not counted, and the search stops
        out.update({"fail_reason": str(e)[:2000], FATAL: str(e)})
        metrics = {}
    except TRIAL_FAILURES as e:  # the trial's own result: recorded, the search goes on
        out.update({"fail_reason": f"{type(e).__name__}: {e}"[:2000], COUNTED: True})
        metrics = {}
    except Exception as e:  # a bug: not counted; the driver stops with this traceback
        out.update({"fail_reason": bug_reason(e), BUG: traceback.format_exc()})
        metrics = {}
    out["seconds"] = time.perf_counter() - t0
    out["finished_at"] = time.time()
    out["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    tune.report({**metrics, RESULT_KEY: json.dumps(out, default=str)})


def _make_searcher(ctx: TrialContext, study: optuna.Study, n_trials: int,
                   on_row: Callable[[dict], None], lock, heartbeat: Heartbeat,
                   log: Callable[[str], None], budget: float | None = None):
    from ray.tune.search import Searcher

    objectives = list(ctx.space.objectives)
    heartbeat_s = float(ctx.space.search.heartbeat_s)
    todo = max(0, n_trials - len(done_trials(study)))
    head_values = ctx.space.blocks.head

    class StudySearch(Searcher):
        """A Ray Tune searcher that asks the study itself (its sampler, its storage): it
        checks the study's quota before each trial, keeps the trials' heartbeats, and writes
        each trial's attributes and result into the study. Ray's public ``Searcher`` API."""

        def __init__(self) -> None:
            super().__init__()
            #: Ray's trial id -> the Optuna trial it runs
            self.trials: dict[str, optuna.trial.Trial] = {}
            self.completed: set[str] = set()
            self.fatal: str | None = None
            #: the traceback of a bug in a worker: the search stops and raises it
            self.bug: str | None = None
            self.stopped: str | None = None
            self._asked = 0
            self._next_check = 0.0

        def suggest(self, ray_id: str) -> dict | None:
            if self.fatal or self.bug or self._asked >= 3 * todo + 10:
                return Searcher.FINISHED
            if time.monotonic() < self._next_check:
                return None  # the quota was full a moment ago: Tune asks again soon
            fail_stale_trials(study, heartbeat_s, log=log)
            with lock():
                trials = study.get_trials(deepcopy=False)
                if budget is not None and spent_equivalents(trials, full_steps(ctx)) >= budget:
                    self.stopped = "budget"
                    log(f"the compute budget is spent: {budget:g} full fine-tune(s)' worth "
                        "of steps; stopping")
                    return Searcher.FINISHED
                done = sum(1 for t in trials if is_done(t))
                running = sum(1 for t in trials if is_running_search(t))
                if done >= n_trials:
                    return Searcher.FINISHED
                if done + running >= n_trials:
                    self._next_check = time.monotonic() + QUOTA_POLL_S
                    return None
                if (not any(t.state == TrialState.WAITING for t in trials)
                        and space_exhausted(ctx_space, trials)):
                    self.stopped = "exhausted"
                    log("the search space is exhausted: every configuration is done or "
                        "running; stopping")
                    return Searcher.FINISHED
                trial = study.ask()
                heartbeat.add(trial_id(study, trial.number))
                recipe = sample_recipe(trial, ctx.blocks, head_values)
                record_prediction(study, trial)
            self.trials[ray_id] = trial
            self._asked += 1
            return {**{b: dict(v) for b, v in recipe.blocks.items()}, "head": recipe.head,
                    "_number": trial.number}

        def on_trial_complete(self, ray_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if ray_id in self.completed or ray_id not in self.trials:
                return
            trial = self.trials[ray_id]
            heartbeat.remove(trial_id(study, trial.number))
            self.completed.add(ray_id)
            if not (result and RESULT_KEY in result):
                self._worker_died(trial)
                return
            attrs = json.loads(result[RESULT_KEY])
            for k, v in attrs.items():
                if k not in ("constraints", FATAL, BUG):
                    trial.set_user_attr(k, v)
            for k, v in (attrs.get("constraints") or {}).items():
                trial.set_constraint(k, float(v))
            if FATAL in attrs:
                self.fatal = attrs[FATAL]
            if BUG in attrs:
                self.bug = f"trial {trial.number}: {attrs['fail_reason']}\n{attrs[BUG]}"
            if "fail_reason" in attrs:
                state, values = TrialState.FAIL, None
            elif STOPPED_REASON in attrs:
                state, values = TrialState.PRUNED, None
            else:
                state, values = TrialState.COMPLETE, [float(result[o]) for o in objectives]
            self._tell(trial, values, state)

        def _worker_died(self, trial) -> None:
            """No result: the worker process died (killed, out of memory) or Ray failed. Not
            the candidate's fault: failed, not counted, its choices queued again."""
            retries = count_retries(study, frozen(study, trial.number))
            reason = ("the Ray worker running it died or failed before reporting (see the Ray "
                      "logs under the study's ray/ folder)")
            trial.set_user_attr("fail_reason", reason)
            if retries >= MAX_RETRIES:
                trial.set_user_attr(COUNTED, True)
            self._tell(trial, None, TrialState.FAIL)
            if retries < MAX_RETRIES:
                requeue(study, frozen(study, trial.number))
            log(f"trial {trial.number}: {reason}; "
                + ("its choices are queued again" if retries < MAX_RETRIES else
                   f"the {retries + 1}th time for these choices, so counted as failed"))

        def _tell(self, trial, values, state) -> None:
            try:
                study.tell(trial, values, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                log(f"trial {trial.number}: failed as stale by another worker while it "
                    "ran; its result is dropped")
                return
            t = frozen(study, trial.number)
            if is_done(t):
                on_row(trial_row(t, objectives))

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the study storage holds the state, and a rerun resumes it."""

        def restore(self, checkpoint_path: str) -> None:
            """See :meth:`save`."""

    from searchcomp.search.runner import recipe_space

    ctx_space = recipe_space(ctx.blocks, head_values)
    return StudySearch()


def remeasure_task(spec: WorkerSpec, points: list[dict[str, Any]], with_base: bool,
                   known_base: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """A Ray task: the quiet latency of ``points`` (see :mod:`searchcomp.search.remeasure`)."""
    import ray
    import torch

    from searchcomp.search.remeasure import time_points

    torch.set_num_threads(spec.threads)
    ctx = _context(spec, worker_device(spec, ray.get_gpu_ids()), known_base)
    return time_points(ctx, points, with_base)


def run_ray(ctx: TrialContext, study: optuna.Study, spec: WorkerSpec, n_trials: int, *,
            address: str | None = None, concurrency: int = 2, cpus_per_trial: float = 1,
            gpus_per_trial: float = 0, timeout_s: float | None = None,
            log: Callable[[str], None] = print, lock=None,
            budget: float | None = None) -> int:
    """Run trials on Ray until ``n_trials`` are done in the study (or ``budget`` full
    fine-tunes' worth of steps are spent), then measure the front's latency again as one Ray
    task; returns how many trials ran."""
    try:
        import ray
        from ray import tune
    except ImportError:
        raise SearchcompError("--backend ray needs Ray Tune: pip install 'searchcomp[ray]' "
                              "(or pip install 'ray[tune]')") from None
    todo = n_trials - len(done_trials(study))
    if todo <= 0:
        return 0
    if spec.device.startswith("cuda") and gpus_per_trial <= 0:
        raise SearchcompError(f"device {spec.device} with --backend ray: give each trial a GPU "
                              "with --gpus-per-trial (e.g. 1, or 0.5 to share one)")
    if not ray.is_initialized():
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                           os.environ.get("PYTHONPATH")]))}
        try:
            if address:
                ray.init(address=address, log_to_driver=False,
                         runtime_env={"env_vars": env})
            else:
                ray.init(include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": env})
        except Exception as e:  # no cluster at that address, port clash, ...
            raise SearchcompError(f"--address: cannot start or join Ray: {e}") from None
    res = ray.cluster_resources()
    idle_gpus = res.get("GPU") and not gpus_per_trial
    log(f"ray: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs; up to {concurrency} "
        f"trials at once, {cpus_per_trial:g} CPU + {gpus_per_trial:g} GPU each"
        + ("; trials train on the CPU (--gpus-per-trial gives them GPUs)" if idle_gpus else ""))
    ran = [0]

    def on_row(row: dict) -> None:
        ran[0] += 1
        log(format_line(row))

    import contextlib
    import warnings

    lock = lock or contextlib.nullcontext
    trainable = tune.with_resources(
        tune.with_parameters(ray_trial, spec=spec, known_base=ctx.known_base),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    storage = Path(ctx.space.studies_dir).resolve() / spec.study_name / "ray"
    with Heartbeat(storage_of(study), ctx.space.search.heartbeat_s) as heartbeat:
        searcher = _make_searcher(ctx, study, n_trials, on_row, lock, heartbeat, log, budget)
        # an upper bound: the searcher says when the study has its N distinct candidates
        # (trials whose worker died are run again and need slots of their own)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=3 * todo + 10,
                                        max_concurrent_trials=concurrency,
                                        time_budget_s=timeout_s,
                                        # one process per slot, its context prepared once
                                        reuse_actors=True),
            run_config=tune.RunConfig(name="tune", storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        with warnings.catch_warnings():  # asking a study with heartbeats outside optimize()
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            tuner.fit()
    if searcher.fatal:
        raise OutputError(searcher.fatal)
    if searcher.bug:
        raise RuntimeError(f"a Ray trial raised an error that is not a trial failure (a bug); "
                           f"the search stopped. {searcher.bug}")
    from searchcomp.search.remeasure import remeasure_front

    task = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)(remeasure_task)
    remeasure_front(study, ctx.space, ctx.base_metrics,
                    lambda pts, base: ray.get(task.remote(spec, pts, base, ctx.known_base)), lock, log)
    return ran[0]
