"""Heartbeats of running trials, and failing the ones whose process died.

Every storage gets the same rule (Optuna's own heartbeat covers database storages only, and
no Ray trial): the process that runs a trial — the local worker, or for Ray the driver that
owns it — writes the time into the trial every ``heartbeat_s`` seconds. A RUNNING trial silent
for two heartbeats belongs to a dead process: any worker of the study fails it, with the
reason ``no heartbeat since <time> (<host:pid>)`` (:func:`~.states.fail_reason`; it is
written so that a trial finishing meanwhile keeps no false reason), and queues its choices
again (twice at most: a third death counts as the candidate's own failure). Failing is a compare-and-set in
the storage, so two workers never both fail (or re-queue) the same trial. Clocks of the
machines sharing a study must agree to well within a heartbeat (NTP).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from searchcomp.search.states import CONFIRM_OF, STALE, trial_params
from searchcomp.search.storage import storage_of, trial_id

#: system attributes (hidden from the dashboard's user attributes) a running trial carries
HEARTBEAT = "searchcomp:heartbeat"
WORKER = "searchcomp:worker"
#: user attribute of a trial queued again after its process died: the trial it repeats
RETRY_OF = "retry_of"
#: times a configuration is queued again after its process died
MAX_RETRIES = 2
#: user attributes a re-queued trial keeps from the trial it repeats (with the rungs it
#: finished, which it does not run again; their steps stay counted on the failed attempt)
KEPT_ATTRS = ("strategy", "tag", "greedy_step", "greedy_block", "greedy_pass", "anchor",
              "rung_accuracy", "rung_costs")


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def beat(storage: optuna.storages.BaseStorage, trial_id: int, worker: str | None = None
         ) -> bool:
    """Mark a running trial alive now; False when it is finished (nothing to mark)."""
    try:
        storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
        if worker is not None:
            storage.set_trial_system_attr(trial_id, WORKER, worker)
        return True
    except (UpdateFinishedTrialError, KeyError):
        return False


class Heartbeat:
    """A daemon thread beating for a changing set of trials every ``interval_s`` seconds;
    use as a context manager around the trials' lifetime."""

    def __init__(self, storage: optuna.storages.BaseStorage, interval_s: float,
                 worker: str | None = None) -> None:
        self.storage, self.interval_s = storage, float(interval_s)
        self.worker = worker or worker_name()
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict:
        # Ray Tune pickles its searcher (which holds this): a copy is inert, the beats come
        # from the original in the driver
        return {"storage": self.storage, "interval_s": self.interval_s, "worker": self.worker}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["storage"], state["interval_s"], state["worker"])

    def add(self, trial_id: int) -> None:
        """Beat for ``trial_id`` from now on (marks it alive at once)."""
        beat(self.storage, trial_id, self.worker)
        with self._lock:
            self._ids.add(trial_id)

    def remove(self, trial_id: int) -> None:
        """Stop beating for ``trial_id``."""
        with self._lock:
            self._ids.discard(trial_id)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                ids = list(self._ids)
            for tid in ids:
                try:
                    alive = beat(self.storage, tid)
                except Exception:  # a storage hiccup: the next beat tries again
                    continue
                if not alive:
                    self.remove(tid)

    def __enter__(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name="searchcomp-heartbeat",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def last_sign_of_life(t: FrozenTrial) -> float:
    """When ``t`` last showed it was alive (its heartbeat, else its start), as a timestamp."""
    hb = t.system_attrs.get(HEARTBEAT)
    if hb is not None:
        return float(hb)
    start = t.datetime_start
    return start.timestamp() if start is not None else time.time()


def fail_stale_trials(study: optuna.Study, heartbeat_s: float,
                      log: Callable[[str], None] | None = None) -> list[int]:
    """Fail every RUNNING trial of ``study`` silent for more than two heartbeats, record why,
    and queue its choices again; returns the numbers failed by this call."""
    grace = 2 * heartbeat_s
    now = time.time()
    failed = []
    storage = storage_of(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = last_sign_of_life(t)
        if now - last <= grace:
            continue
        since = datetime.fromtimestamp(last).isoformat(sep=" ", timespec="seconds")
        who = t.system_attrs.get(WORKER, "its worker")
        retries = count_retries(study, t)
        reason = f"no heartbeat since {since} from {who} (its process died or hung)"
        if retries >= MAX_RETRIES:
            reason += f"; the {retries + 1}th time for these choices, so counted as failed"
        try:
            tid = trial_id(study, t.number)
            # a finished trial takes no attribute, so the reason goes first, where it means
            # something only once the state below is FAIL (see states.STALE): a trial that
            # finishes in between keeps no false reason
            storage.set_trial_system_attr(tid, STALE, {"reason": reason,
                                                       "counted": retries >= MAX_RETRIES})
            storage.set_trial_state_values(tid, TrialState.FAIL)
        except (UpdateFinishedTrialError, KeyError):
            continue  # finished meanwhile, or another worker failed it first
        failed.append(t.number)
        # a confirmation run is made again by the next 'front --confirm', not by a search
        again = retries < MAX_RETRIES and t.user_attrs.get(CONFIRM_OF) is None
        if log:
            log(f"trial {t.number}: {reason}" + ("; its choices are queued again" if again
                                                 else ""))
        if again:
            requeue(study, t)
    return failed


def requeue(study: optuna.Study, t: FrozenTrial) -> None:
    """Queue the choices of ``t`` (whose process died) again, with its tags."""
    if trial_params(t):
        attrs = {k: t.user_attrs[k] for k in KEPT_ATTRS if k in t.user_attrs}
        study.enqueue_trial(trial_params(t), user_attrs={**attrs, RETRY_OF: t.number})


def count_retries(study: optuna.Study, t: FrozenTrial) -> int:
    """How many times the choices of ``t`` were queued again before ``t`` ran."""
    by_number = {x.number: x for x in study.get_trials(deepcopy=False)}
    n, cur = 0, t
    while cur.user_attrs.get(RETRY_OF) is not None and n <= MAX_RETRIES:
        n += 1
        cur = by_number.get(cur.user_attrs[RETRY_OF])
        if cur is None:
            break
    return n
