"""Cross-process locks: one per study for its bookkeeping, and one per machine and study folder
for quiet latency measurements.

The study lock makes "check the quota, then create a trial and store its choices" and "queue
the seed configurations unless present" atomic across every worker of a study: a PostgreSQL
or MySQL storage gets a database advisory lock (so workers on several machines agree), a
SQLite or journal file a ``fcntl`` lock on a file beside it.

The folder locks live in the study's folder (``studies/<study>/``) and hold for the processes
of one machine: :func:`measuring` is held while a trial times its model, so two trials never
measure latency at once; :func:`computing` (shared) is held while a trial builds and
fine-tunes, and :func:`quiet` (exclusive) waits until no trial of the study runs on this
machine — the end-of-run re-measurement takes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no fcntl, no cross-process lock
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if missing): exclusive, or shared with other
    shared holders. Released when the block ends or the process dies."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def measuring(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Held while a trial measures latency: one measurement at a time on this machine."""
    return file_lock(Path(folder) / ".latency.lock")


def computing(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Held (shared) while a trial of the study builds, fine-tunes and measures here."""
    return file_lock(Path(folder) / ".busy.lock", shared=True)


def quiet(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Waits until no trial of the study runs on this machine, and keeps it so."""
    return file_lock(Path(folder) / ".busy.lock")


def _beside(path: str) -> Path:
    """The hidden lock file next to a storage file."""
    p = Path(path)
    return p.with_name(f".{p.name}.searchcomp-lock")


def _lock_id(name: str) -> int:
    """A signed 64-bit key for a database advisory lock."""
    return int.from_bytes(hashlib.sha256(f"searchcomp:{name}".encode()).digest()[:8], "big",
                          signed=True)


class StudyLock:
    """The lock of one study in one storage (see the module doc); a reusable context manager.
    Storages it cannot lock (an unknown URL scheme) get no lock."""

    def __init__(self, url: str, study_name: str) -> None:
        self.url, self.study_name = url, study_name
        self._engine = None

    def __getstate__(self) -> dict:
        return {"url": self.url, "study_name": self.study_name}  # no engine: made on use

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["study_name"])

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        url = self.url
        if url.startswith(("postgresql", "mysql")):
            with self._database_lock():
                yield
        elif url.startswith("sqlite:///"):
            with file_lock(_beside(url[len("sqlite:///"):])):
                yield
        elif url.startswith("journal:") or url.endswith((".log", ".journal")):
            with file_lock(_beside(url.removeprefix("journal:").removeprefix("///"))):
                yield
        else:
            yield

    @contextlib.contextmanager
    def _database_lock(self) -> Iterator[None]:
        import sqlalchemy

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url,
                                                    poolclass=sqlalchemy.pool.NullPool)
        key = _lock_id(self.study_name)
        with self._engine.connect() as conn:
            if self.url.startswith("postgresql"):
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:k)")
            else:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": str(key)})
                unlock = sqlalchemy.text("SELECT RELEASE_LOCK(:k)")
                key = str(key)  # type: ignore[assignment]
            try:
                yield
            finally:
                conn.execute(unlock, {"k": key})
