"""What a Ray worker process keeps: the spec it rebuilds its trial context from, the
context itself (prepared once per process, reused by every trial Ray runs there), its device,
and the study it reads its peers from (the rungs strategy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from searchcomp.search.storage import storage_of, trial_id
from searchcomp.search.trial import TrialContext


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
    #: ``search`` or ``rungs`` (a rungs worker reads its peers from, and writes each rung's
    #: result to, the study at ``storage``)
    strategy: str = "search"
    storage: str | None = None


class _StoredTrial:
    """The study's trial ``number`` as :func:`~searchcomp.search.rungs.climb` uses it, from a
    worker: its attributes, and writes straight to the storage."""

    def __init__(self, study: optuna.Study, number: int) -> None:
        self._storage, self._id = storage_of(study), trial_id(study, number)
        self.number = number
        self.user_attrs = dict(self._storage.get_trial(self._id).user_attrs)

    def set_user_attr(self, key: str, value: Any) -> None:
        self._storage.set_trial_user_attr(self._id, key, value)


_STUDIES: dict[WorkerSpec, optuna.Study] = {}


def _worker_study(spec: WorkerSpec, ctx: TrialContext) -> optuna.Study:
    if spec not in _STUDIES:
        from searchcomp.search.study import open_study

        _STUDIES[spec] = open_study(ctx.space, storage=spec.storage,
                                    study_name=spec.study_name, load_only=True)
    return _STUDIES[spec]


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
