"""A throw-away PostgreSQL server for tests and benchmarks: Debian's binaries, a temporary
data folder, a free localhost port; stopped and removed afterwards. PostgreSQL refuses to run
as root, so as root it runs as the 'postgres' user (Debian's package creates it)."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def available() -> str | None:
    """Why a server cannot be started here, or None."""
    if not _initdb():
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    if importlib.util.find_spec("psycopg2") is None:
        return "psycopg2 is not installed (pip install -e .[postgres])"
    return None


def _initdb() -> Path | None:
    found = [shutil.which("initdb"), *sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))]
    return next((Path(p).resolve() for p in found if p), None)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields a SQLAlchemy URL of an empty database on it."""
    bindir = _initdb().parent
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="searchcomp-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    data = str(root / "data")
    try:
        run(str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", data, "-l", str(root / "log"), "-w", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                "searchcomp")
            yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/searchcomp"
        finally:
            run(str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
