"""Ray Tune backend: the same trial function as the local loop, run as Ray trials.

Ray's ``OptunaSearch`` drives the same sampler over the same define-by-run space and asks the
same Optuna study (same storage) for each trial; when a Ray trial ends, its metrics and user
attributes are written onto that Optuna trial, so ``front``, ``report``, ``export`` and
``dashboard`` read a Ray study exactly like a local one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from searchcomp.candidate import Recipe
from searchcomp.errors import SearchcompError
from searchcomp.search.runner import format_line, sample_recipe, weights_name
from searchcomp.search.study import COUNTED, STOPPED_REASON, done_trials, trial_row
from searchcomp.search.trial import TrialContext

RESULT_KEY = "searchcomp"


@dataclass(frozen=True)
class WorkerSpec:
    """What a Ray worker needs to rebuild the trial context on its own (picklable)."""

    space_file: str
    overrides: tuple[str, ...]
    quick: bool
    study_name: str
    seed: int
    threads: int
    #: the run's device (``--device``, else the space's ``device``)
    device: str = "auto"


_CONTEXTS: dict[tuple[WorkerSpec, str], TrialContext] = {}


def worker_device(spec: WorkerSpec, gpu_ids: list) -> str:
    """The device of a Ray trial: ``cpu`` or ``mps`` when the run names them; else (``auto``,
    ``cuda``, ``cuda:N``) the GPU Ray gave the trial (Ray makes it the only visible one:
    ``cuda``), or the CPU when it gave none."""
    if spec.device in ("cpu", "mps"):
        return spec.device
    return "cuda" if gpu_ids else "cpu"


def _context(spec: WorkerSpec, device: str,
             known_base: dict[str, Any] | None) -> TrialContext:
    """The trial context, built once per worker process and reused by every trial Ray runs
    in it (actors are reused): data, base, teacher logits; the base's figures come from the
    driver instead of being measured again."""
    key = (spec, device)
    if key not in _CONTEXTS:
        from searchcomp.config import load_space
        from searchcomp.search.trial import prepare

        space = load_space(spec.space_file, list(spec.overrides), quick=spec.quick)
        _CONTEXTS[key] = prepare(space, progress=False, log=lambda m: None,
                                 study_name=spec.study_name, device=device,
                                 known_base=known_base)
    return _CONTEXTS[key]


def ray_trial(config: dict[str, Any], spec: WorkerSpec,
              known_base: dict[str, Any] | None = None) -> None:
    """The Ray trainable: rebuild the recipe from Ray's config, run the trial, report."""
    import ray
    import torch
    from ray import tune

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
        out["summary"] = recipe.summary(ctx.block_names)
        outcome = run_trial(ctx, recipe, spec.seed + number, weights_name(number))
        out.update(outcome.to_attrs())
        metrics = {o: float(outcome.metrics[o]) for o in ctx.space.objectives}
    except BelowFloor as e:
        out.update({STOPPED_REASON: str(e), "accuracy_at_check": e.accuracy})
        metrics = {}
    except Exception as e:  # the trial's own result: recorded, the search goes on
        out.update({"fail_reason": f"{type(e).__name__}: {e}"[:2000], COUNTED: True})
        metrics = {}
    out["seconds"] = time.perf_counter() - t0
    out["finished_at"] = time.time()
    out["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    tune.report({**metrics, RESULT_KEY: json.dumps(out, default=str)})


def _make_searcher(ctx: TrialContext, study: optuna.Study, on_row: Callable[[dict], None]):
    from ray.tune.search.optuna import OptunaSearch

    objectives = list(ctx.space.objectives)

    class StudySearch(OptunaSearch):
        """OptunaSearch that writes each trial's attributes into the shared study."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            attrs = json.loads(result[RESULT_KEY]) if result and RESULT_KEY in result else {
                "fail_reason": "the Ray worker died or raised before reporting", COUNTED: True}
            for k, v in attrs.items():
                if k != "constraints":
                    ot_trial.set_user_attr(k, v)
            for k, v in (attrs.get("constraints") or {}).items():
                ot_trial.set_constraint(k, float(v))
            if "fail_reason" in attrs:
                state, values = TrialState.FAIL, None
            elif STOPPED_REASON in attrs:
                state, values = TrialState.PRUNED, None
            else:
                state, values = TrialState.COMPLETE, [float(result[o]) for o in objectives]
            self._ot_study.tell(ot_trial, values, state=state)
            self._completed_trials.add(trial_id)
            frozen = self._ot_study._storage.get_trial(ot_trial._trial_id)
            on_row(trial_row(frozen, objectives))

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the study storage holds the state, and a rerun resumes it."""

        def restore(self, checkpoint_path: str) -> None:
            """See :meth:`save`."""

    def define(trial) -> dict[str, Any]:
        sample_recipe(trial, ctx.blocks, ctx.space.blocks.head)
        return {"_number": trial.number}

    modes = ["max" if d == "maximize" else "min" for d in ctx.space.directions]
    searcher = StudySearch(space=define, metric=objectives, mode=modes,
                           sampler=study.sampler, study_name=study.study_name,
                           storage=study._storage)
    return searcher


def run_ray(ctx: TrialContext, study: optuna.Study, spec: WorkerSpec, n_trials: int, *,
            address: str | None = None, concurrency: int = 2, cpus_per_trial: float = 1,
            gpus_per_trial: float = 0, timeout_s: float | None = None,
            log: Callable[[str], None] = print) -> int:
    """Run trials on Ray until ``n_trials`` are done in the study; returns how many ran."""
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

    searcher = _make_searcher(ctx, study, on_row)
    trainable = tune.with_resources(
        tune.with_parameters(ray_trial, spec=spec, known_base=ctx.known_base),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    storage = Path(ctx.space.studies_dir).resolve() / spec.study_name / "ray"
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=todo,
                                    max_concurrent_trials=concurrency,
                                    time_budget_s=timeout_s,
                                    # one process per slot, its context prepared once
                                    reuse_actors=True),
        run_config=tune.RunConfig(name="tune", storage_path=str(storage), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)))
    import warnings

    with warnings.catch_warnings():  # asking a study with heartbeats outside optimize()
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        tuner.fit()
    return ran[0]
