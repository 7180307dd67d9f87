"""The profile file of a study: sensitivity rows and latency rows, each under a content key.

``studies/<study>/profile.json`` holds, per section (``accuracy``, ``latency``), rows keyed
by a hash of everything that determines them (the base model's identity, the recovery
settings, the runtime, the block's structure, the change). A later ``profile`` or ``run``
reads the rows whose keys it computes and fills only the missing ones, so a space that grows
costs only its new rows, and a changed setting never reuses a stale row. No torch here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_NAME = "profile.json"
FORMAT = 1
SECTIONS = ("accuracy", "latency", "settings")


def content_key(obj: Any) -> str:
    """A short stable hash of ``obj`` (JSON with sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ProfileStore:
    """Rows of one study's profile file, read once and written back atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.data: dict[str, dict[str, dict[str, Any]]] = self._read()

    @classmethod
    def of_study(cls, study_dir: str | os.PathLike[str]) -> ProfileStore:
        """The store in a study's folder (``studies/<study>/profile.json``)."""
        return cls(Path(study_dir) / FILE_NAME)

    def _read(self) -> dict[str, dict[str, dict[str, Any]]]:
        empty: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in SECTIONS}
        if not self.path.is_file():
            return empty
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return empty  # a damaged file only costs its rows again
        if raw.get("format") != FORMAT:
            return empty
        for s in SECTIONS:
            empty[s].update(raw.get(s) or {})
        return empty

    def get(self, section: str, key: str) -> dict[str, Any] | None:
        """The row stored under ``key``, or None."""
        return self.data[section].get(key)

    def rows(self, section: str) -> dict[str, dict[str, Any]]:
        """Every row of ``section`` (any settings), by key."""
        return self.data[section]

    def put(self, section: str, key: str, row: dict[str, Any], save: bool = True) -> None:
        """Store ``row`` under ``key`` (and write the file, unless ``save`` is False)."""
        self.data[section][key] = {**row, "stored_at": time.time()}
        if save:
            self.save()

    def save(self) -> None:
        """Write the file atomically, keeping rows another process wrote meanwhile: the read,
        merge and write happen under an exclusive lock on ``profile.json.lock`` (two writers
        merging at once would each write back only their own rows)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.with_name(self.path.name + ".lock")):
            on_disk = self._read()
            for s in SECTIONS:
                on_disk[s].update(self.data[s])
            self.data = on_disk
            tmp = self.path.with_suffix(f".tmp{os.getpid()}.{time.monotonic_ns()}")
            tmp.write_text(json.dumps({"format": FORMAT, **self.data}, indent=1, default=str))
            os.replace(tmp, self.path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (between processes, and between threads that open it
    separately); where ``fcntl`` is missing (Windows), no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
