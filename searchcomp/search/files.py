"""Files a search writes: checked writable before any work, written whole or not at all.

A weights file is written under a hidden partial name (``.<name>.partial-<host>-<pid>``) and
renamed into place, so a process killed while writing leaves no half-written weights under
the real name; the next run on that host removes the partials of processes that are gone.
A file that cannot be written is an :class:`~searchcomp.errors.OutputError`: the disk is at
fault, not the candidate, so the search stops with one clear line instead of failing every
trial.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

from searchcomp.errors import OutputError

_PARTIAL = re.compile(r"^\..+\.partial-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+$")


def check_writable(folder: Path, what: str) -> None:
    """Raise :class:`OutputError` unless files can be created in ``folder``, or, when it does
    not exist yet, in its nearest existing parent (nothing is left behind)."""
    folder = Path(folder).absolute()
    here = folder
    while not here.exists() and here != here.parent:
        here = here.parent
    probe = here / f".probe-{uuid.uuid4().hex[:8]}"
    try:
        if not here.is_dir():
            raise NotADirectoryError(20, "not a folder")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write {what} in {folder}: {e.strerror or e} ({here}); make "
                          "it writable (or point studies_dir elsewhere)") from None


def write_atomic(path: Path, write: Callable[[Path], None], what: str = "a file") -> Path:
    """Call ``write(tmp)`` on a partial file beside ``path``, then rename it to ``path``.
    Any failure removes the partial file and raises :class:`OutputError`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{socket.gethostname()}-{os.getpid()}-"
                         f"{uuid.uuid4().hex[:6]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except Exception as e:  # OSError, or torch's RuntimeError when the disk is full
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise OutputError(f"cannot write {what} {path}: {reason}; free space or make "
                          f"{path.parent} writable, then run the same command again") from None
    return path


def remove_dead_partials(folder: Path) -> int:
    """Remove partial files in ``folder`` left by processes of this host that are gone;
    returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    host, removed = socket.gethostname(), 0
    for p in folder.iterdir():
        m = _PARTIAL.match(p.name)
        if not m or m["host"] != host or _alive(int(m["pid"])):
            continue
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
