"""Preparation shared by the workers of a study on one machine.

Every worker needs the same prepared context: the base (trained once into the cache under
``studies/_base/``), the teacher's logits for the fine-tune images
(``studies/<study>/teacher-*.pt``) and the base's figures (params, MiB, latency: the reference
point). All three are keyed by content, so a worker that finds them reuses them. Started
together, though, every worker would find nothing and do all three itself, on the same cores
at once: the base trained N times, its latency timed under the load of the others.

So :func:`preparing` lets one worker of a study prepare at a time (a file lock in the study
folder, and one beside the cached base for studies that share it): the first does the work
and leaves the files; the others wait, then load them. The base's figures go into
``studies/<study>/base-figures.json`` with the key they were measured under (the base's
weights and the ``measure:`` settings): the study storage gets them too, but only after the
first worker has opened it, which is too late for the workers waiting on the lock.

They share the cores too. torch gives every process as many threads as the machine has cores,
so N workers on one machine would run N times that many threads on the same cores, and
OpenMP threads that wait for each other on a busy core slow every process down many times
over (measured: 4 workers x 2 threads on 2 cores, each trial 5-10x slower than alone, so the
four together did less than one). :class:`CoreShare` registers each local worker in the study
folder (``.workers/<host>-<pid>-*``, locked while it lives) and gives each trial
``cores // live workers`` threads (at least 1). A thread count the user set
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, every worker keeps its threads
    fcntl = None  # type: ignore[assignment]

from searchcomp.config import Space
from searchcomp.errors import OutputError
from searchcomp.search.files import write_atomic
from searchcomp.search.locks import file_lock

FIGURES = "base-figures.json"


def study_folder(space: Space, study_name: str | None) -> Path:
    """``studies/<study>/``: where the study's files live on this machine."""
    return Path(space.studies_dir) / (study_name or space.name)


@contextlib.contextmanager
def preparing(space: Space, study_name: str | None) -> Iterator[None]:
    """Held while a worker prepares: one worker of the study at a time on this machine, and
    one preparation at a time of a base trained here (studies may share the cached base). A
    folder that cannot hold a lock file (read-only) gets no lock."""
    with contextlib.ExitStack() as stack:
        if space.base.source != "checkpoint":
            from searchcomp.models.base import cache_path

            _hold(stack, cache_path(space).with_suffix(".lock"))
        _hold(stack, study_folder(space, study_name) / ".prepare.lock")
        yield


def _hold(stack: contextlib.ExitStack, path: Path) -> None:
    try:
        stack.enter_context(file_lock(path))
    except OSError:
        pass  # nothing can be written there, so no worker leaves files to share either


def known_figures(space: Space, study_name: str | None, key: dict[str, Any],
                  known: dict[str, Any] | None) -> dict[str, Any] | None:
    """``known`` (figures the caller has, e.g. from the study) when they were measured under
    ``key``, else the figures an earlier worker left in the study folder under ``key``, else
    None (the base must be measured)."""
    if known and known.get("key") == key and known.get("metrics"):
        return known
    try:
        stored = json.loads((study_folder(space, study_name) / FIGURES).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(stored, dict) and stored.get("key") == key and stored.get("metrics"):
        return stored
    return None


def store_figures(space: Space, study_name: str | None, key: dict[str, Any],
                  metrics: dict[str, Any]) -> None:
    """Leave the base's figures for the other workers of the study (best effort: a folder
    that cannot be written only costs them a measurement of their own)."""
    path = study_folder(space, study_name) / FIGURES
    text = json.dumps({"key": key, "metrics": metrics}, indent=2, default=str)
    try:
        write_atomic(path, lambda tmp: Path(tmp).write_text(text), "the base's figures")
    except OutputError:  # sharing is an optimisation
        pass


#: environment variables through which a user sets the thread count: then it is theirs
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class CoreShare:
    """One local worker of a study, registered in ``folder/.workers/`` while the context is
    open; :meth:`apply` sets torch's threads to this worker's share of the cores."""

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder) / ".workers"
        self.host = socket.gethostname()
        self.path: Path | None = None
        self._fd: int | None = None
        self._threads: int | None = None

    def __enter__(self) -> CoreShare:
        import torch

        self._threads = torch.get_num_threads()
        if fcntl is None or any(os.environ.get(v) for v in THREAD_VARS):
            return self
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # locked before it gets its name, so no one sees it unlocked and removes it
            tmp = self.dir / f".{uuid.uuid4().hex}"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.path = self.dir / f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(tmp, self.path)
            self._fd = fd
        except OSError:
            self._fd, self.path = None, None
        return self

    def live(self) -> int:
        """Workers of the study running on this machine now (this one included); the files of
        workers that are gone (their lock is free) are removed."""
        if self._fd is None:
            return 1
        n = 0
        for p in self.dir.glob(f"{self.host}-*"):
            if p == self.path:
                n += 1
                continue
            try:
                fd = os.open(p, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                p.unlink(missing_ok=True)  # we got its lock: its worker is gone
            except BlockingIOError:
                n += 1
            except OSError:
                pass
            finally:
                os.close(fd)
        return max(n, 1)

    def apply(self) -> int:
        """Set torch's threads to this worker's share of the cores; returns the count."""
        import torch

        if self._fd is None or self._threads is None:
            return torch.get_num_threads()
        share = max(1, self._threads // self.live())
        if share != torch.get_num_threads():
            torch.set_num_threads(share)
        return share

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._threads is not None and torch.get_num_threads() != self._threads:
            torch.set_num_threads(self._threads)
        if self._fd is not None:
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
