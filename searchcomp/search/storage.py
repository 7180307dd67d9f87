"""The storage a study lives in, reached through Optuna's public API only.

A ``Study`` has no public accessor for its storage, nor a ``Trial`` for its id, but the
storage's own methods (:class:`optuna.storages.BaseStorage`) are public. So the storage a
study is opened on is remembered here when it is opened (:func:`study_on`, :func:`load_on`:
what :func:`searchcomp.search.study.open_study` uses), and a trial's id is asked of that
storage by the trial's number.
"""

from __future__ import annotations

import weakref
from typing import Any

import optuna
from optuna.storages import BaseStorage

_OPENED: weakref.WeakKeyDictionary[optuna.Study, BaseStorage] = weakref.WeakKeyDictionary()


def study_on(storage: BaseStorage, **create: Any) -> optuna.Study:
    """``optuna.create_study(storage=storage, **create)``, its storage remembered."""
    study = optuna.create_study(storage=storage, **create)
    _OPENED[study] = storage
    return study


def load_on(storage: BaseStorage, study_name: str) -> optuna.Study:
    """``optuna.load_study`` on ``storage``, its storage remembered."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    _OPENED[study] = storage
    return study


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` was opened on by :func:`study_on` or :func:`load_on`."""
    try:
        return _OPENED[study]
    except KeyError:
        raise ValueError(f"study {study.study_name!r} was not opened by searchcomp "
                         "(searchcomp.search.storage.study_on / load_on): its storage is "
                         "unknown") from None


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study``."""
    return storage_of(study).get_study_id_from_name(study.study_name)


def trial_id(study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study``."""
    return storage_of(study).get_trial_id_from_study_id_trial_number(study_id(study), number)


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of ``study`` as stored now."""
    return storage_of(study).get_trial(trial_id(study, number))
