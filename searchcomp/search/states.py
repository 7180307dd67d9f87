"""What a trial of a search study is, for the bookkeeping: done, a duplicate, skipped, stale.

Optuna's states (COMPLETE, PRUNED, FAIL, RUNNING, WAITING) are told apart by the user
attributes a search sets, so that ``--trials N`` means N distinct candidates finished for
good, however many processes, resumes or Ray workers took part.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

#: user attribute set on a trial whose failure is its own result (not an interruption)
COUNTED = "counted"
#: user attribute of a slot a worker gave back without running it (older studies; a search
#: now checks its quota before it creates a trial); Optuna records it as PRUNED
SKIPPED = "skipped"
#: user attribute of a trial stopped early by the accuracy floor (Optuna: PRUNED)
STOPPED_REASON = "stopped_reason"
#: user attribute of a queued trial whose choices a finished trial already had: answered from
#: that trial (same values), not fine-tuned again and not counted toward ``--trials``
DUPLICATE_OF = "duplicate_of"
#: user attribute of a confirmation run (``front --confirm``): the number of the front trial
#: whose recipe it fine-tunes again with a new seed; never counted toward ``--trials``
CONFIRM_OF = "confirm_of"
#: user attribute of a confirmation run: which of the K runs of its trial it is (1..K)
CONFIRM_RUN = "confirm_run"


#: system attribute a worker writes on a RUNNING trial it is about to fail as stale (its
#: process died): ``{"reason", "counted"}``. Written before the state change (a finished
#: trial takes no attribute), it means something only on a trial that ended FAIL without a
#: ``fail_reason`` of its own: a trial that finished in between keeps no false reason.
STALE = "searchcomp:stale"


def fail_reason(t: FrozenTrial) -> str | None:
    """Why ``t`` failed: its own ``fail_reason``, else the stale check's (a FAIL trial whose
    process died), else None."""
    own = t.user_attrs.get("fail_reason")
    if own is not None:
        return own
    stale = t.system_attrs.get(STALE)
    return stale["reason"] if stale and t.state == TrialState.FAIL else None


def _counted_failure(t: FrozenTrial) -> bool:
    if t.user_attrs.get("fail_reason") is not None:  # told by its own process
        return bool(t.user_attrs.get(COUNTED))
    stale = t.system_attrs.get(STALE)
    return bool(t.user_attrs.get(COUNTED) or (stale and stale.get("counted")))


def is_repeat(attrs: dict[str, Any]) -> bool:
    """A trial (its user attributes, or a row) that repeats another's choices on purpose: an
    answered duplicate or a confirmation run. Not a new candidate: not counted, not a point of
    the front by itself."""
    return attrs.get(DUPLICATE_OF) is not None or attrs.get(CONFIRM_OF) is not None


def params_key(params: dict[str, Any]) -> tuple:
    """A hashable key of a trial's choices (its Optuna parameters)."""
    return tuple(sorted(params.items()))


def trial_params(t: FrozenTrial) -> dict[str, Any]:
    """The choices of ``t``: for a queued trial the ones it was given (authoritative while it
    is running, before all are suggested), else its parameters."""
    return {**t.params, **(t.system_attrs.get("fixed_params") or {})}


def is_finished(t: FrozenTrial) -> bool:
    """Finished for good: complete (a duplicate too), stopped early, or failed for its own
    reasons (not interrupted, and not a slot a worker skipped)."""
    if t.user_attrs.get(SKIPPED):
        return False
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and _counted_failure(t))


def is_done(t: FrozenTrial) -> bool:
    """Counts toward ``--trials``: finished for good, not a duplicate of an earlier trial and
    not a confirmation run."""
    return is_finished(t) and not is_repeat(t.user_attrs)


def is_running_search(t: FrozenTrial) -> bool:
    """A running trial that will count toward ``--trials`` (not a confirmation run)."""
    return t.state == TrialState.RUNNING and t.user_attrs.get(CONFIRM_OF) is None


def is_taken(t: FrozenTrial) -> bool:
    """Its choices need no new trial: finished for good, running, or queued."""
    return is_finished(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)


def taken_keys(trials: list[FrozenTrial]) -> set[tuple]:
    """The :func:`params_key` of every taken trial (see :func:`is_taken`)."""
    return {params_key(trial_params(t)) for t in trials if is_taken(t) and trial_params(t)}
