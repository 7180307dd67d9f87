"""The Optuna study behind a search: storage, sampler, constraints, and what counts as done."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searchcomp.config import Space
from searchcomp.errors import SearchcompError
from searchcomp.search.locks import StudyLock
from searchcomp.search.samplers import make_sampler
from searchcomp.search.states import (  # noqa: F401 - re-exported: the study's vocabulary
    CONFIRM_OF,
    CONFIRM_RUN,
    COUNTED,
    DUPLICATE_OF,
    SKIPPED,
    STOPPED_REASON,
    fail_reason,
    is_done,
    is_finished,
)
from searchcomp.search.storage import load_on, study_on

#: what a trial stores beside its accuracy and latency to say how sure they are
INTERVAL_KEYS = ("accuracy_low", "accuracy_high", "val_images", "latency_p10_ms",
                 "latency_p90_ms", "latency_under_load")


def default_storage(space: Space, study_name: str | None = None) -> str:
    """``sqlite:///<studies_dir>/<study>/study.db``."""
    folder = Path(space.studies_dir) / (study_name or space.name)
    return f"sqlite:///{folder / 'study.db'}"


def resolve_storage(space: Space, storage: str | None = None,
                    study_name: str | None = None) -> str:
    """The storage URL in force: ``--storage``, else the space's, else the default file."""
    return storage or space.search.storage or default_storage(space, study_name)


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``. Trials left running by a killed process are found by
    searchcomp's own heartbeat (:mod:`searchcomp.search.lease`), the same for every storage
    and for Ray trials, so Optuna's (database storages only) stays off."""
    if url.startswith(("sqlite:", "postgresql", "mysql")):
        from optuna.storages import RDBStorage

        try:
            # workers started together would race to create the tables: one at a time
            with StudyLock(url, "searchcomp:storage-schema")():
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ModuleNotFoundError as e:  # the database driver
            raise SearchcompError(f"--storage: cannot open {url}: {e} (for PostgreSQL: pip "
                                  "install 'searchcomp[postgres]')") from None
        except Exception as e:  # bad URL, unreachable server
            msg = str(e).splitlines()[0]
            raise SearchcompError(f"--storage: cannot open {url}: {msg}") from None
    if url.endswith((".log", ".journal")) or url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = url.removeprefix("journal:").removeprefix("///")
        return JournalStorage(JournalFileBackend(path))
    raise SearchcompError(f"--storage: {url!r} is not a database URL (sqlite:///file.db, "
                          "postgresql://...) nor a journal file (journal:path.log)")


def open_study(space: Space, *, storage: str | None = None, study_name: str | None = None,
               sampler: str | None = None, seed: int | None = None,
               n_trials: int | None = None, load_only: bool = False,
               recipe_space: dict[str, Any] | None = None) -> optuna.Study:
    """Create or load the study of ``space`` (the same command resumes the same study).
    With ``recipe_space`` (:func:`searchcomp.search.runner.recipe_space`) the sampler never
    proposes choices a trial already has (:class:`~searchcomp.search.samplers.DistinctSampler`)."""
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
    store = make_storage(url)
    if load_only:
        try:
            return load_on(store, name)
        except KeyError:
            raise SearchcompError(f"no study named {name!r} in {url}; run "
                                  f"'searchcomp run {space.file}' first") from None
    s = space.search
    smp = make_sampler(sampler or s.sampler, s.seed if seed is None else seed,
                       n_trials or s.trials, s.population_size, recipe_space)
    try:
        study = study_on(store, study_name=name, sampler=smp, directions=space.directions,
                         load_if_exists=True)
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


def done_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count toward ``--trials``: distinct candidates finished for good."""
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
    for k in ("accuracy", *INTERVAL_KEYS, "params", "size_mib", "latency_ms", "flops",
              "latency_runtime", "weights", "finetune_seconds", "max_init_error", STOPPED_REASON,
              DUPLICATE_OF, "retry_of", CONFIRM_OF, CONFIRM_RUN, "seed", "anchor", "rung",
              "rung_accuracy", "rung_costs", "finetune_steps_spent", "finetune_steps"):
        if k in a:
            row[k] = a[k]
    why = fail_reason(t)
    if why is not None:
        row["fail_reason"] = why
    return row
