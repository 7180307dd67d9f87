"""How the commands show their progress: live bars on a terminal, plain lines anywhere else.

A progress bar redraws itself with carriage returns and cursor moves. On a terminal that is a
live display; written to a file or a pipe (``searchcomp run ... > log 2>&1``, CI, a job
scheduler) it is a log full of escape codes and half lines. So a bar is drawn only when the
stream it would draw on is a terminal; elsewhere the callers write plain lines instead (one per
trial, one per epoch and phase of the base, one per profile row).

``SEARCHCOMP_PROGRESS=lines`` forces plain lines on a terminal too; ``SEARCHCOMP_PROGRESS=bars``
forces bars (e.g. in a notebook, whose output streams are not terminals).

A command given ``--json`` prints one JSON document on stdout and nothing else there: while it
works, :func:`stdout_to_stderr` sends whatever else would reach stdout to stderr.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

#: the environment variable that overrides the terminal check: ``bars`` or ``lines``
ENV = "SEARCHCOMP_PROGRESS"


def is_terminal(stream: IO[str] | None = None) -> bool:
    """True when bars may be drawn on ``stream`` (default: stderr, where progress goes)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("bars", "lines"):
        return forced == "bars"
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def bar(total: int | None, desc: str, unit: str, *, enabled: bool = True,
        stream: IO[str] | None = None, **kwargs: Any):
    """A tqdm bar on ``stream`` (default stderr) that is drawn only when ``enabled`` and the
    stream is a terminal; otherwise a disabled bar whose calls do nothing."""
    from tqdm.auto import tqdm

    stream = sys.stderr if stream is None else stream
    return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True,
                disable=not (enabled and is_terminal(stream)), **kwargs)


def shows(b: Any) -> bool:
    """True when the bar ``b`` (from :func:`bar`) is drawn: callers then need no lines."""
    return not getattr(b, "disable", True)


def loss_text(loss: float | None) -> str:
    """A loss for a progress display: empty until a loss has been read (never ``nan`` for a
    loss not read yet)."""
    return "" if loss is None or not math.isfinite(loss) else f"{loss:.3f}"


def json_text(obj: Any) -> str:
    """``obj`` as strict JSON: a NaN or infinite figure becomes null (Python's ``NaN`` is not
    JSON, and parsers such as jq refuse it)."""
    return json.dumps(_finite(obj), indent=2, default=str, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout meanwhile -- by Python code, C extensions or child
    processes, which inherit the descriptor -- goes to stderr instead."""
    sys.stdout.flush()
    real = sys.stdout
    try:
        saved = os.dup(1)
    except OSError:  # no descriptor 1 (stdout closed): only Python's stream to move
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stdout = real
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
