"""`searchcomp run` as a function: prepare, open the study, seed it, search (or go greedy)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from searchcomp.config import Space
from searchcomp.errors import SearchcompError
from searchcomp.predict.budget import Budget
from searchcomp.search.files import check_writable, remove_dead_partials
from searchcomp.search.greedy import run_greedy
from searchcomp.search.locks import StudyLock
from searchcomp.search.remeasure import remeasure_here
from searchcomp.search.runner import Searcher, recipe_space
from searchcomp.search.seeds import enqueue_seeds
from searchcomp.search.study import done_trials, open_study, resolve_storage
from searchcomp.search.surrogate import SurrogateSampler
from searchcomp.search.trial import prepare


@dataclass
class RunSummary:
    """What a run did."""

    study: str
    storage: str
    ran: int
    done: int
    greedy: dict[str, Any] | None = None
    #: why the run stopped before ``trials`` were done ("exhausted", "timeout", ...) or None
    stopped: str | None = None
    #: full fine-tunes' worth of steps the study's trials have spent (all rungs, anchors)
    compute: float | None = None


def run_search(space: Space, *, trials: int | None = None, timeout_s: float | None = None,
               storage: str | None = None, study_name: str | None = None,
               sampler: str | None = None, seed: int | None = None,
               strategy: str | None = None, budget: float | None = None,
               threshold: float | None = None, quiet: bool = False,
               log: Callable[[str], None] = print, backend: str = "local",
               ray_options: dict[str, Any] | None = None, device: str | None = None,
               max_drop: float | None = None, greedy_form: str = "cumulative",
               target: str | Budget | None = None
               ) -> RunSummary:
    """Run (or resume) the study of ``space``: the base first, then trials until ``trials``
    are done or ``budget`` full fine-tunes' worth of steps are spent (default
    ``search.budget``). ``strategy`` (default ``search.strategy``): ``search`` fine-tunes
    every candidate fully, ``rungs`` takes them up fidelity rungs and stops most early
    (:mod:`searchcomp.search.rungs`). ``strategy="greedy"`` runs the greedy baseline in the
    same study instead, keeping
    a swap while validation accuracy >= ``threshold`` (default 0.70) or >= the base's minus
    ``max_drop``; ``greedy_form``: ``cumulative`` or ``rebuild``. ``sampler="surrogate"``
    first fills the study's profile (sensitivity and latency tables); ``target`` (e.g.
    ``"size_mib<=2,latency_ms<=5"``) makes it spend the trials in that region.
    ``backend="ray"`` runs the trials on Ray Tune (``ray_options``: address, concurrency,
    cpus_per_trial, gpus_per_trial). ``device`` overrides the space's ``device``.

    The base is measured once per study: a later run or another worker on the same study
    reads the stored figures instead of measuring again under other load."""
    from searchcomp.compute import compute_for
    from searchcomp.search.context import measure_device

    compute_for(space, device), measure_device(space)  # a missing GPU: fail before anything
    n = trials or space.search.trials
    strategy = strategy or space.search.strategy
    budget = budget if budget is not None else space.search.budget
    name = study_name or space.name
    if isinstance(target, str):
        target = Budget.parse(target)
    if target is not None:
        if (sampler or "surrogate") != "surrogate":
            raise SearchcompError(f"--target steers the surrogate sampler; drop --sampler "
                                  f"{sampler} (or use --sampler surrogate)")
        sampler = "surrogate"
    if threshold is not None and max_drop is not None:
        raise SearchcompError("give --threshold or --max-drop, not both")
    # a folder the run cannot write is refused before any work (the base may train for hours)
    check_writable(space.study_dir(name) / "trials", "trial weights")
    if space.base.source != "checkpoint":
        check_writable(Path(space.studies_dir) / "_base", "the cached base model")
    ctx = prepare(space, progress=not quiet, log=log, study_name=name, device=device,
                  known_base=_stored_base(space, storage, name))
    remove_dead_partials(ctx.weights_dir)
    url = resolve_storage(space, storage, name)
    lock = StudyLock(url, name)
    study = open_study(space, storage=storage, study_name=name, sampler=sampler, seed=seed,
                       n_trials=sampler_trials(n, strategy, budget),
                       recipe_space=recipe_space(ctx.blocks, space.blocks.head))
    if ctx.base_measured:
        stored = study.user_attrs  # another worker of this study may have measured it first
        if stored.get("base_key") == ctx.base_key and stored.get("base"):
            ctx.base_metrics, ctx.base_measured = dict(stored["base"]), False
    b = ctx.base_metrics
    how = "" if ctx.base_measured else "; as measured earlier for this study"
    log(f"base: val accuracy {b['accuracy']:.4f}, params {b['params']:,}, "
        f"{b['size_mib']:.2f} MiB, {b['latency_ms']:.2f} ms ({b['latency_runtime']}{how})")
    if ctx.base_measured or study.user_attrs.get("base_key") != ctx.base_key:
        study.set_user_attr("base", b)  # measured here, or by a worker that did not store it
        study.set_user_attr("base_key", ctx.base_key)
    if ctx.int8_measured:
        study.set_user_attr("int8_scheme", ctx.int8_record)
    study.set_user_attr("objectives", list(space.objectives))
    study.set_user_attr("space", space.file)
    study.set_user_attr("blocks", ctx.block_names)
    study.set_user_attr("head_name", ctx.head_name)
    searcher = Searcher(ctx, study, seed=space.search.seed if seed is None else seed,
                        quiet=quiet, strategy=strategy, lock=lock, log=log)
    if strategy == "greedy":
        before = len(done_trials(study))
        if max_drop is not None:
            threshold = float(b["accuracy"]) - max_drop
            log(f"greedy: threshold {threshold:.4f} = base validation accuracy "
                f"{b['accuracy']:.4f} - {max_drop:g}")
        greedy = run_greedy(searcher, 0.70 if threshold is None else threshold, greedy_form)
        kept = ", ".join(greedy["kept"]) or "none"
        log(f"greedy: kept {greedy['swap']} on {len(greedy['kept'])} block(s): {kept}; "
            f"result trial {greedy['result_trial']}")
        _remeasure(ctx, study, lock, log)
        return RunSummary(name, url, len(done_trials(study)) - before, len(done_trials(study)),
                          greedy)
    queued = enqueue_seeds(study, ctx, lock, n)
    if queued:
        log(f"queued {queued} seed trial(s): the base, the anchors (the one-minute baselines) "
            "and the space's uniform configurations")
    if strategy == "rungs":
        from searchcomp.search.rungs import RungPlan, full_steps

        log(f"strategy rungs: {RungPlan.of(space, full_steps(ctx)).describe()}; the base and "
            "the anchors go to the last rung")
    done = len(done_trials(study))
    if done >= n:
        log(f"study {name} already has {done} finished trials (>= {n}); "
            "raise --trials to run more")
    if isinstance(study.sampler, SurrogateSampler):
        _attach_predictor(study.sampler, ctx, name, target, quiet, log,
                          space.search.seed if seed is None else seed)
    timeout = timeout_s if timeout_s is not None else space.search.timeout_s
    if backend == "ray":
        ran = _run_on_ray(space, ctx, study, name, n, timeout, ray_options or {}, log,
                          space.search.seed if seed is None else seed, lock, device, strategy,
                          budget, url)
    else:
        ran = searcher.run(n, timeout, budget)
        _remeasure(ctx, study, lock, log)
    used = _log_compute(ctx, study, log)
    return RunSummary(name, url, ran, len(done_trials(study)), stopped=searcher.stopped,
                      compute=used)


def _log_compute(ctx, study, log: Callable[[str], None]) -> float:
    """Print what the study's trials spent, in full fine-tune equivalents, and how many
    stopped at each rung; returns the equivalents."""
    from collections import Counter

    from searchcomp.search.rungs import RUNG, full_steps, spent_equivalents

    trials = study.get_trials(deepcopy=False)
    used = spent_equivalents(trials, full_steps(ctx))
    stopped = Counter(int(t.user_attrs[RUNG]) for t in trials
                      if t.state == TrialState.PRUNED and RUNG in t.user_attrs)
    at = ", ".join(f"{k} at rung {r}" for r, k in sorted(stopped.items()))
    log(f"compute: {used:.2f} full fine-tune equivalent(s) of {full_steps(ctx)} steps spent by "
        f"{len(done_trials(study))} candidate(s)" + (f"; stopped early: {at}" if at else ""))
    return used


def sampler_trials(trials: int, strategy: str, budget: float | None) -> int:
    """How many trials the sampler is sized for (NSGA-II's population, TPE's start-up):
    ``trials``, or fewer when a ``budget`` of full fine-tunes ends a ``search`` first (each
    of its trials is one full fine-tune). Sized on ``trials`` alone, a budget of 20 under
    ``--trials 400`` gave NSGA-II a population of 50: it never left its random first
    generation."""
    if budget is not None and strategy == "search":
        return max(1, min(trials, math.ceil(budget)))
    return trials


def _stored_base(space: Space, storage: str | None, name: str) -> dict[str, Any] | None:
    """The base figures an earlier run stored in the study (None: no study yet)."""
    try:
        attrs = open_study(space, storage=storage, study_name=name, load_only=True).user_attrs
    except SearchcompError:
        return None
    return {"metrics": attrs.get("base"), "key": attrs.get("base_key"),
            "int8": attrs.get("int8_scheme")}


def _remeasure(ctx, study, lock, log: Callable[[str], None]) -> None:
    """The front's latency measured again, quietly, unless other workers still run trials of
    the study (the last one to finish does it)."""
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if running:
        log(f"front latency not re-measured now: trial(s) {running} still run elsewhere; the "
            "worker that finishes last does it (or: searchcomp front SPACE --remeasure)")
        return
    remeasure_here(ctx, study, lock, log)


def _attach_predictor(sampler: SurrogateSampler, ctx, name: str, target: Budget | None,
                      quiet: bool, log: Callable[[str], None], seed: int) -> None:
    """Fill the study's profile (only missing rows run) and give the sampler its predictor."""
    from searchcomp.predict.budget import constraint_budget
    from searchcomp.search.profile import fill_profile
    from searchcomp.search.runner import param_name
    from searchcomp.search.surrogate import layout_params

    tables, computed = fill_profile(ctx, name, log=log, progress=not quiet)
    if computed:
        log(f"profile: {computed} row(s) computed; 'searchcomp profile {ctx.space.file}' shows "
            "the table")
    predictor = tables.predictor(ctx.base_metrics, seed)
    region = constraint_budget(ctx.space, ctx.base_metrics).merged(target)
    sampler.attach(predictor, list(ctx.space.objectives), region,
                   layout_params(tables.layout, param_name))
    if target is not None:
        log(f"target: trials go to {target.describe()}")


def _run_on_ray(space: Space, ctx, study, name: str, n: int, timeout: float | None,
                opts: dict[str, Any], log: Callable[[str], None], seed: int, lock,
                device: str | None, strategy: str = "search", budget: float | None = None,
                storage: str | None = None) -> int:
    from searchcomp.search.ray_backend import WorkerSpec, run_ray

    file, overrides, quick = space.load_args
    # workers may run elsewhere (another cwd, another machine): pass absolute paths
    extra = [f"studies_dir={Path(space.studies_dir).resolve()}"]
    if space.data.root:
        extra.append(f"data.root={Path(space.data.root).expanduser().resolve()}")
    cpus = float(opts.get("cpus_per_trial") or 1)
    spec = WorkerSpec(file, (*overrides, *extra), quick, name, seed, max(1, int(cpus)),
                      device or space.device, strategy, storage)
    return run_ray(ctx, study, spec, n, address=opts.get("address"),
                   concurrency=int(opts.get("concurrency") or 2), cpus_per_trial=cpus,
                   gpus_per_trial=float(opts.get("gpus_per_trial") or 0), timeout_s=timeout,
                   log=log, lock=lock, budget=budget)


def remeasure_study(space: Space, *, storage: str | None = None, study_name: str | None = None,
                    log: Callable[[str], None] = print) -> int:
    """``searchcomp front --remeasure``: measure the latency of the study's front again,
    quietly (:mod:`searchcomp.search.remeasure`). Returns how many trials were measured."""
    name = study_name or space.name
    study = open_study(space, storage=storage, study_name=name, load_only=True)
    ctx = prepare(space, progress=False, log=lambda m: None, study_name=name)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        log(f"waiting until no trial of the study runs on this machine ({len(running)} "
            "running in the study)...")
    return remeasure_here(ctx, study, StudyLock(resolve_storage(space, storage, name), name),
                          log)


def confirm_study(space: Space, numbers: list[int], runs: int, *, storage: str | None = None,
                  study_name: str | None = None, log: Callable[[str], None] = print,
                  device: str | None = None, progress: bool = True) -> int:
    """``searchcomp front --confirm K``: fine-tune trials ``numbers`` (the front) ``runs``
    more times each with new seeds, as linked trials not counted toward ``--trials``
    (:mod:`searchcomp.search.confirm`); only the runs still missing are made. Returns how many
    ran now."""
    from searchcomp.search.confirm import confirm_trials, missing_runs
    from searchcomp.search.progress import Progress

    if runs < 1:
        raise SearchcompError(f"--confirm must be >= 1, got {runs}")
    name = study_name or space.name
    study = open_study(space, storage=storage, study_name=name, load_only=True)
    if not missing_runs(study, numbers, runs):
        return 0
    ctx = prepare(space, progress=progress, log=log, study_name=name, device=device,
                  known_base=_stored_base(space, storage, name))
    bar = Progress(None, 0, quiet=not progress) if progress else None
    try:
        return confirm_trials(ctx, study, numbers, runs,
                              lock=StudyLock(resolve_storage(space, storage, name), name),
                              log=bar.write if bar and not bar.quiet else log,
                              on_step=_steps(bar, ctx) if bar else None)
    finally:
        if bar:
            bar.close()


def _steps(bar, ctx) -> Callable[[int, int, float | None], None]:
    """The fine-tune bar of a confirmation run (reset at each run's first step)."""
    from searchcomp.train import total_steps

    total = total_steps(ctx.space.finetune, ctx.splits.train)

    def on_step(step: int, n: int, loss: float | None) -> None:
        if step <= 1:
            bar.start_trial(-1, total)
            bar.steps.set_description("confirm fine-tune")
        bar.step(step, n, loss)

    return on_step
