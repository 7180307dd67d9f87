"""Reliability figures: workers, trials, faults injected, trials lost or doubled.

    python bench/reliability.py [SPACE] [--quick] [--trials 16] [--workers 4] [--no-ray]
                                [--no-postgres]

Each scenario runs `searchcomp run` as a user would, in its own study of SPACE (default: the
tests' tiny CNN on 8x8 digits, 36 configurations; e.g. `spaces/resnet18-fashion.yaml --quick`
for real trials), and reads the study back:
  resume     --sampler random --trials T/2, then the same command with --trials T
  workers    W processes started together on one journal file, T trials
  postgres   2 processes on a PostgreSQL server started here (Debian's postgresql), T/2 trials
  kill -9    the driver killed during a trial, then the same command again
  ray        a Ray worker killed during a trial; then a Ray driver killed with trials running
             and the same study run without Ray
Prints, per scenario: processes, trials asked, faults injected, done, distinct configurations,
lost (asked - done), doubled (done - distinct), placeholder trials, and wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = """\
name: bench-reliability
model: {arch: "tests.tiny_factory:tiny_cnn", num_classes: 10, in_channels: 1, image_size: 8}
data: {dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50}
base: {source: train, epochs: 1}
blocks:
  select: ["0", "1"]
  default: {conv: [keep, separable], prune: [0.0], bits: [32, 8, 4]}
  head: [keep]
finetune: {steps: 2}
measure: {runs: 30, warmup: 1}
search: {trials: 16, seed_configs: [{conv: separable}, {bits: 8}], heartbeat_s: 2}
"""
SLOW = ["--set", "finetune.steps=200"]


class Bench:
    def __init__(self, space: str, quick: bool, folder: Path) -> None:
        self.space, self.quick, self.folder = space, quick, folder
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                os.environ.get("PYTHONPATH")]))}

    def cmd(self, study: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "searchcomp", "run", self.space, "--quiet", "--study",
                study, "--set", f"studies_dir={self.folder}", "--set", "search.heartbeat_s=2",
                *(["--quick"] if self.quick else []), *extra]

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, env=self.env, cwd=self.folder, **kw)

    def run(self, cmd: list[str]) -> str:
        p = self.popen(cmd)
        err = p.communicate()[1]
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
        return err

    def study(self, name: str, storage: str | None = None):
        from searchcomp.config import load_space
        from searchcomp.search.study import open_study

        space = load_space(self.space, [f"studies_dir={self.folder}"], quick=self.quick)
        return open_study(space, storage=storage, study_name=name, load_only=True)

    def wait_running(self, name: str, proc: subprocess.Popen, exclude: set[int]) -> list[int]:
        from optuna.trial import TrialState

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                trials = self.study(name).get_trials()
            except Exception:
                continue
            running = [t.number for t in trials
                       if t.state == TrialState.RUNNING and t.number not in exclude]
            if running:
                return running
        sys.exit(f"no trial of {name} was seen running: {proc.stderr.read()[-2000:]}")


def row(b: Bench, label: str, procs: int, asked: int, faults: str, name: str, t0: float,
        storage: str | None = None) -> tuple:
    from searchcomp.search.study import done_trials

    study = b.study(name, storage)
    done = done_trials(study)
    distinct = len({tuple(sorted(t.params.items())) for t in done})
    placeholders = sum(1 for t in study.get_trials() if t.user_attrs.get("skipped"))
    return (label, procs, asked, faults, len(done), distinct, asked - len(done),
            len(done) - distinct, placeholders, time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", help="a space file (default: the tests' tiny CNN)")
    p.add_argument("--quick", action="store_true", help="the space's quick: settings")
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="searchcomp-reliability-"))
    space = args.space
    if space is None:
        space = str(folder / "tiny.yaml")
        Path(space).write_text(TINY)
    space = str(Path(space).resolve())
    b = Bench(space, args.quick, folder)
    n = args.trials
    import torch

    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
          f"{torch.__version__}; space {args.space or 'tiny CNN (tests)'}"
          f"{' --quick' if args.quick else ''}", flush=True)
    print("warming the base cache...", file=sys.stderr, flush=True)
    b.run(b.cmd("warmup", "--trials", "1"))
    rows = []

    t0 = time.perf_counter()
    b.run(b.cmd("resume", "--sampler", "random", "--trials", str(n // 2)))
    b.run(b.cmd("resume", "--sampler", "random", "--trials", str(n)))
    rows.append(row(b, "resume (random, T/2 then T)", 1, n, "-", "resume", t0))

    t0 = time.perf_counter()
    journal = folder / "workers.log"
    cmd = b.cmd("workers", "--storage", f"journal:{journal}", "--trials", str(n))
    procs = [b.popen(cmd) for _ in range(args.workers)]
    for proc in procs:
        if proc.wait() != 0:
            sys.exit(proc.stderr.read()[-3000:])
    rows.append(row(b, "workers on one journal", args.workers, n, "-", "workers", t0,
                    f"journal:{journal}"))

    if not args.no_postgres:
        from tests.postgres_server import available, postgres_server

        why = available()
        if why:
            print(f"postgres: skipped ({why})", file=sys.stderr)
        else:
            with postgres_server() as url:
                t0 = time.perf_counter()
                cmd = b.cmd("pg", "--storage", url, "--trials", str(n // 2))
                procs = [b.popen(cmd) for _ in range(2)]
                for proc in procs:
                    if proc.wait() != 0:
                        sys.exit(proc.stderr.read()[-3000:])
                rows.append(row(b, "workers on PostgreSQL", 2, n // 2, "-", "pg", t0, url))

    t0 = time.perf_counter()
    b.run(b.cmd("kill", "--trials", "1"))
    proc = b.popen(b.cmd("kill", "--trials", str(n // 2), *SLOW), start_new_session=True)
    b.wait_running("kill", proc, set())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    b.run(b.cmd("kill", "--trials", str(n // 2)))
    rows.append(row(b, "kill -9 driver, rerun", 2, n // 2, "1 driver", "kill", t0))

    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        from tests.test_reliability import _ray_workers

        t0 = time.perf_counter()
        ray = ["--backend", "ray", "--concurrency", "2", *SLOW]
        proc = b.popen(b.cmd("ray", "--trials", "3", *ray))
        pids: list[int] = []
        while not pids and proc.poll() is None:
            time.sleep(0.3)
            pids = _ray_workers(proc.pid)
        os.kill(pids[0], signal.SIGKILL)
        if proc.wait() != 0:
            sys.exit(proc.stderr.read()[-3000:])
        before = {t.number for t in b.study("ray").get_trials()}
        proc = b.popen(b.cmd("ray", "--trials", str(n // 2), *ray), start_new_session=True)
        b.wait_running("ray", proc, before)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        t1 = time.perf_counter()
        b.run(b.cmd("ray", "--trials", str(n // 2)))
        rerun = time.perf_counter() - t1
        rows.append(row(b, f"ray: worker, driver (rerun {rerun:.0f} s)", 3, n // 2,
                        "1 worker, 1 driver", "ray", t0))

    head = ("scenario", "processes", "asked", "faults injected", "done", "distinct", "lost",
            "doubled", "placeholders", "wall s")
    table = [head] + [tuple(str(x) for x in r[:-1]) + (f"{r[-1]:.0f}",) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
