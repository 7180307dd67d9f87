"""The Optuna study behind a search: storage, sampler, constraints, and what counts as done."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchcomp.config import Space
from searchcomp.errors import SearchcompError
from searchcomp.search.samplers import make_sampler

#: user attribute set on a trial whose failure is its own result (not an interruption)
COUNTED = "counted"
#: user attribute of a slot a worker gave back without running it (the quota was filled
#: elsewhere, or another worker runs the same choices); Optuna records it as PRUNED
SKIPPED = "skipped"
#: user attribute of a trial stopped early by the accuracy floor (Optuna: PRUNED)
STOPPED_REASON = "stopped_reason"


def default_storage(space: Space, study_name: str | None = None) -> str:
    """``sqlite:///<studies_dir>/<study>/study.db``."""
    folder = Path(space.studies_dir) / (study_name or space.name)
    return f"sqlite:///{folder / 'study.db'}"


def resolve_storage(space: Space, storage: str | None = None,
                    study_name: str | None = None) -> str:
    """The storage URL in force: ``--storage``, else the space's, else the default file."""
    return storage or space.search.storage or default_storage(space, study_name)


def make_storage(url: str, heartbeat_s: int) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; database URLs get heartbeats so that trials left running
    by a killed process are failed after 2 heartbeats and run again."""
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                    engine_kwargs={"pool_pre_ping": True})
        except Exception as e:  # bad URL, missing driver, unreachable server
            raise SearchcompError(f"--storage: cannot open {url}: {e}") from None
    if url.endswith((".log", ".journal")) or url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:").removeprefix("///")
        return JournalStorage(JournalFileBackend(path))
    raise SearchcompError(f"--storage: {url!r} is not a database URL (sqlite:///file.db, "
                          "postgresql://...) nor a journal file (journal:path.log)")


def open_study(space: Space, *, storage: str | None = None, study_name: str | None = None,
               sampler: str | None = None, seed: int | None = None,
               n_trials: int | None = None, load_only: bool = False) -> optuna.Study:
    """Create or load the study of ``space`` (the same command resumes the same study)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    name = study_name or space.name
    url = resolve_storage(space, storage, name)
    if url.startswith("sqlite:///"):
        db = Path(url[len("sqlite:///"):])
        if load_only and not db.is_file():
            raise SearchcompError(f"no study yet: {db} does not exist; run "
                                  f"'searchcomp run {space.file}' first")
        db.parent.mkdir(parents=True, exist_ok=True)
    journal = url.removeprefix("journal:")
    if load_only and url.startswith("journal:") and not Path(journal).is_file():
        raise SearchcompError(f"no study yet: {journal} does not exist; run "
                              f"'searchcomp run {space.file} --storage {url}' first")
    store = make_storage(url, space.search.heartbeat_s)
    if load_only:
        try:
            return optuna.load_study(study_name=name, storage=store)
        except KeyError:
            raise SearchcompError(f"no study named {name!r} in {url}; run "
                                  f"'searchcomp run {space.file}' first") from None
    s = space.search
    smp = make_sampler(sampler or s.sampler, s.seed if seed is None else seed,
                       n_trials or s.trials, s.population_size)
    try:
        study = optuna.create_study(storage=store, study_name=name, sampler=smp,
                                    directions=space.directions, load_if_exists=True)
    except ValueError as e:  # existing study with other directions
        raise SearchcompError(f"study {name!r} in {url} exists with other objectives: {e}; "
                              "use --study NAME for a new one") from None
    if list(study.directions) != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                                  else optuna.study.StudyDirection.MINIMIZE
                                  for d in space.directions]:
        raise SearchcompError(f"study {name!r} in {url} was created with other objectives; "
                              "use --study NAME for a new one")
    keys = sorted(k for k, v in space.constraints.model_dump().items() if v is not None)
    if "constraints" in study.user_attrs and study.user_attrs["constraints"] != keys:
        raise SearchcompError(f"study {name!r} was run with constraints "
                              f"{study.user_attrs['constraints'] or 'none'}, now {keys or 'none'}; "
                              "samplers cannot mix them: use --study NAME for a new study")
    study.set_user_attr("constraints", keys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(space.objectives))
    return study


def is_done(t: FrozenTrial) -> bool:
    """Finished for good: complete, stopped early, or failed for its own reasons (not
    interrupted, and not a slot a worker skipped)."""
    if t.user_attrs.get(SKIPPED):
        return False
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and bool(t.user_attrs.get(COUNTED)))


def done_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward ``--trials``."""
    return [t for t in study.get_trials(deepcopy=False) if is_done(t)]


def state_name(t: FrozenTrial) -> str:
    """``complete``, ``stopped`` (early, by the accuracy floor), ``skipped`` (a slot given
    back), ``fail``, ``running`` or ``waiting``: Optuna's PRUNED is told apart by its cause."""
    if t.state == TrialState.PRUNED:
        return SKIPPED if t.user_attrs.get(SKIPPED) else "stopped"
    return t.state.name.lower()


def trial_row(t: FrozenTrial, objectives: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A finished trial's stored results as one plain dict."""
    a = t.user_attrs
    row = {"trial": t.number, "state": state_name(t), "recipe": a.get("recipe"),
           "summary": a.get("summary"), "strategy": a.get("strategy", "search"),
           "tag": a.get("tag"), "feasible": a.get("feasible", True)}
    for k in ("accuracy", "params", "size_mib", "latency_ms", "flops", "latency_runtime",
              "weights", "finetune_seconds", "max_init_error", "fail_reason", STOPPED_REASON,
              "duplicate_of"):
        if k in a:
            row[k] = a[k]
    return row
