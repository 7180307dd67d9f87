"""Trials per hour: 1 worker with all cores vs 2 workers with half the cores each.

    python bench/scaling.py [SPACE] [--trials 8] [--no-ray]

On the space's --quick settings, with conv choices limited to keep/separable so every trial
costs about the same, runs the same number of trials three ways, each in its own study:
  1. one local worker, torch using every core;
  2. two local processes on one shared journal storage, one thread each;
  3. Ray Tune, 2 concurrent trials, 1 CPU each (skipped without Ray or with --no-ray).
The base is trained (or loaded from the cache) before timing. Prints wall time and trials/hour.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ["blocks.default.conv=[keep, separable]", "blocks.head=[keep]", "search.seed_configs=[]"]


def _cmd(space: str, study: str, trials: int, *extra: str) -> list[str]:
    sets = [a for s in SETS for a in ("--set", s)]
    return [sys.executable, "-m", "searchcomp", "run", space, "--quick", "--quiet", "--study",
            study, "--trials", str(trials), *sets, *extra]


def _timed(cmds: list[list[str]], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(p.args)}\n{err[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", default=str(ROOT / "spaces" / "resnet18-fashion.yaml"))
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--no-ray", action="store_true")
    args = p.parse_args()
    cores = os.cpu_count() or 2
    n = args.trials
    print(f"warming the base cache ({args.space} --quick)...", file=sys.stderr)
    _timed([_cmd(args.space, "scaling-warmup", 1)], cores)

    rows = []
    t = _timed([_cmd(args.space, "scaling-1worker", n)], cores)
    rows.append((f"1 worker x {cores} threads", t))
    journal = Path("studies") / "scaling-2workers.log"
    if journal.exists():
        journal.unlink()
    half = max(1, cores // 2)
    t = _timed([_cmd(args.space, "scaling-2workers", n, "--storage", f"journal:{journal}")
                for _ in range(2)], half)
    rows.append((f"2 workers x {half} thread(s), journal storage", t))
    if not args.no_ray and shutil.which("ray") is not None:
        t = _timed([_cmd(args.space, "scaling-ray", n, "--backend", "ray", "--concurrency", "2",
                         "--cpus-per-trial", str(half))], half)
        rows.append((f"Ray Tune, 2 trials x {half} CPU(s)", t))

    print(f"\n{n} trials each, {cores} cores, space {args.space} --quick (conv keep/separable)")
    print(f"{'setup':<46}{'wall s':>8}{'trials/hour':>13}")
    for name, secs in rows:
        print(f"{name:<46}{secs:>8.0f}{n * 3600 / secs:>13.0f}")


if __name__ == "__main__":
    main()
