"""Several workers on one study: do they share the preparation?

    python bench/workers.py [SPACE] [--trials 16] [--workers 4] [--steps 3] [--cold]

Runs the same number of tiny trials (the space's --quick settings with --steps fine-tune
steps, conv choices keep/separable and the head kept, so trials cost about the same) twice,
each in a new study under a fresh studies folder:
  1. one worker (`searchcomp run`), torch using every core;
  2. --workers processes started together on one journal storage, as a user would start them
     (the same command each, no thread settings).
The base is trained into a shared cache before timing (--cold: each setup trains its own,
timed). Prints both wall times, their ratio (the goal: at most 1.5) and the CPU, and from the
workers' logs who trained the base, computed the teacher's logits and measured the base.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ["blocks.default.conv=[keep, separable]", "blocks.head=[keep]", "search.seed_configs=[]"]


def cpu_name() -> str:
    """The CPU's model name and core count, as lscpu reports them."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = re.search(r"Model name:\s*(.+)", out)[1].strip()
    except (OSError, TypeError):
        name = platform.processor() or platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def command(space: str, studies: Path, study: str, trials: int, steps: int,
            *extra: str) -> list[str]:
    sets = [*SETS, f"finetune.steps={steps}", f"studies_dir={studies}"]
    return [sys.executable, "-m", "searchcomp", "run", space, "--quick", "--quiet", "--study",
            study, "--trials", str(trials), *[a for s in sets for a in ("--set", s)], *extra]


def timed(cmds: list[list[str]]) -> tuple[float, list[str]]:
    """Start every command at once; the wall time until the last ends, and their logs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in cmds]
    logs = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    for p, log in zip(procs, logs, strict=True):
        if p.returncode != 0:
            sys.exit(f"failed: {' '.join(p.args)}\n{log[-3000:]}")
    return seconds, logs


def who(logs: list[str]) -> str:
    """How many workers did each part of the preparation themselves."""
    parts = {"trained the base": r"^base: training .* for ",
             "computed the teacher's logits": r"^teacher: logits of the base",
             "measured the base": r"^base: val accuracy (?!.*as measured earlier)"}
    n = {k: sum(bool(re.search(p, log, re.M)) for log in logs) for k, p in parts.items()}
    return ", ".join(f"{v} {k}" for k, v in n.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", default=str(ROOT / "spaces" / "resnet18-fashion.yaml"))
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="fine-tune steps per trial")
    p.add_argument("--cold", action="store_true",
                   help="no base in the cache: each setup trains it, within its time")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    base_cache = tmp / "warm" / "_base"
    try:
        if not args.cold:
            print("training the base into the cache (not timed)...", file=sys.stderr)
            timed([command(args.space, tmp / "warm", "warmup", 1, args.steps)])
        rows = []
        for label, n in (("1 worker", 1), (f"{args.workers} workers, journal storage",
                                           args.workers)):
            studies = tmp / f"w{n}"
            if not args.cold:
                shutil.copytree(base_cache, studies / "_base")
            extra = ("--storage", f"journal:{studies / 'shared.log'}") if n > 1 else ()
            cmds = [command(args.space, studies, "bench", args.trials, args.steps, *extra)
                    for _ in range(n)]
            print(f"running: {label}...", file=sys.stderr)
            seconds, logs = timed(cmds)
            done = sum(int(m[1]) for log in logs
                       for m in re.finditer(r"done: (\d+) trial\(s\) run now", log))
            rows.append((label, seconds, done, who(logs)))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"cpu {cpu_name()}; python {platform.python_version()}; load average {load:.1f} "
              "at the end")
        space = Path(args.space).resolve()
        shown = space.relative_to(ROOT) if space.is_relative_to(ROOT) else space
        print(f"space {shown} --quick, {args.trials} trials of {args.steps} fine-tune "
              f"step(s) (conv keep/separable); base {'trained in each setup' if args.cold else 'cached before timing'}")
        print(f"{'setup':<34}{'wall s':>8}{'trials run':>12}  preparation")
        for label, seconds, done, note in rows:
            print(f"{label:<34}{seconds:>8.1f}{done:>12}  {note}")
        print(f"ratio {rows[1][1] / rows[0][1]:.2f} (goal: at most 1.5)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
