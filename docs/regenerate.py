"""Regenerate the example outputs the docs show, by running the commands.

    python docs/regenerate.py [NAME ...] [--list]

Each example is a real command run from a scratch folder (``build/docs-run/``, where
``spaces/`` and ``examples/`` link to the repository's, so the command reads exactly as a user
types it from the repository root) with this checkout's code. Its output is written to
``docs/snippets/NAME.md`` as a console block followed by the line saying the CPU it ran on,
the date and the wall time; the pages include the snippets (``--8<-- "snippets/NAME.md"``).
The base model is cached in ``build/docs-run/studies/_base/`` between regenerations; each
study is started afresh. With no NAME every example runs (a few minutes on 2 cores: the quick
search is most of it). ``workers`` (bench/workers.py, the longest) runs only when named.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = ROOT / "docs" / "snippets"
WORK = ROOT / "build" / "docs-run"
SPACE = "spaces/resnet18-fashion.yaml"
STUDY = "resnet18-fashion-quick"
#: extra arguments of the docs' search (none: exactly the quick start's command, a few
#: minutes on 2 quiet cores; e.g. "--trials 6 --set finetune.steps=10" on a busy machine)
RUN_ARGS = ""


def cpu_line() -> str:
    """The CPU as lscpu names it, its cores and the features that decide training and int8
    speed here (bf16 training needs avx512_bf16 or AMX; int8 kernels want VNNI)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = re.search(r"Model name:\s*(.+)", out)[1].strip()
        flags = set(re.search(r"Flags:\s*(.+)", out)[1].split())
    except (OSError, subprocess.CalledProcessError, TypeError):
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8")
    have = [f for f in wanted if f in flags]
    missing = [f for f in ("avx512_bf16", "amx_bf16") if f not in flags]
    note = f"; no {'/'.join(missing)}: fp32 training" if len(missing) == 2 else ""
    return f"{model}, {os.cpu_count()} cores ({' '.join(have) or 'no AVX flags'}{note})"


def versions() -> str:
    import torch

    return f"torch {torch.__version__}, python {platform.python_version()}"


def run(cmd: str, *, stdout_only: bool = False) -> tuple[str, float]:
    """Run ``cmd`` (starting with ``searchcomp``) in the scratch folder through pipes, as a
    user's log would see it; returns what it printed (stderr then stdout, or stdout alone)
    and the wall seconds."""
    argv = cmd.split()
    if argv[0] == "searchcomp":
        argv = [sys.executable, "-m", "searchcomp", *argv[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("SEARCHCOMP_PROGRESS", None)
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=WORK, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {cmd}\n{r.stderr[-4000:]}")
    return (r.stdout if stdout_only else r.stderr + r.stdout).rstrip("\n"), seconds


def write(name: str, blocks: list[tuple[str, str]], seconds: float, note: str = "") -> None:
    """``docs/snippets/NAME.md``: one console block of commands and outputs, then where and
    when they ran."""
    body = "\n".join(f"$ {cmd}\n{out}" if out else f"$ {cmd}" for cmd, out in blocks)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ran = (f"*Ran on {cpu_line()}; {versions()}; {datetime.date.today().isoformat()}, "
           f"{seconds:.0f} s wall, load average {load:.1f} at the end"
           f"{' (the machine was shared with other jobs)' if load > 2.5 else ''}.{note}*")
    fence = "````" if "```" in body else "```"  # an output holding a fenced block (a card)
    SNIPPETS.mkdir(parents=True, exist_ok=True)
    (SNIPPETS / f"{name}.md").write_text(f"{fence}console\n{body}\n{fence}\n\n{ran}\n")
    print(f"wrote docs/snippets/{name}.md ({seconds:.0f} s)", file=sys.stderr)


# -- the examples ------------------------------------------------------------------------------

def ex_inspect() -> None:
    cmd = f"searchcomp inspect {SPACE} --quick"
    out, s = run(cmd, stdout_only=True)
    write("inspect", [(cmd, out)], s)


def ex_inspect_resnet50() -> None:
    cmd = "searchcomp inspect spaces/resnet50.yaml"
    out, s = run(cmd, stdout_only=True)
    write("inspect-resnet50", [(cmd, out)], s)


def ex_device_error() -> None:
    cmd = f"searchcomp run {SPACE} --quick --device cuda"
    argv = [sys.executable, "-m", "searchcomp", *cmd.split()[1:]]
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=WORK, capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 2:
        sys.exit(f"expected exit code 2 (no CUDA here), got {r.returncode}: {r.stderr[-2000:]}")
    write("device-error", [(cmd, r.stderr.rstrip() + "\n$ echo $?\n2")],
          time.perf_counter() - t0)


def run_command() -> str:
    """The docs' search command."""
    return f"searchcomp run {SPACE} --quick {RUN_ARGS}".rstrip()


def ex_run() -> None:
    shutil.rmtree(WORK / "studies" / STUDY, ignore_errors=True)  # a fresh study
    cmd = run_command()
    out, s = run(cmd)
    write("run", [(cmd, out)], s, " The log as a file or a pipe gets it: plain lines.")


def ex_front() -> None:
    cmd = f"searchcomp front {SPACE} --quick"
    out, s = run(cmd, stdout_only=True)
    write("front", [(cmd, out)], s, " The study is the one of the run above.")
    readme_front(out)


def readme_front(out: str) -> None:
    """The README's example of reading the front: the table's header, the base and the first
    front rows of that output, between its markers, with where it ran."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("trial "))
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        if line.startswith("    ") and not line.lstrip()[:1].isdigit():
            continue  # the notes under a row: the docs page shows them
        rows.append(line)
    table = "\n".join(rows[:6])
    more = f" (and {len(rows) - 6} more row(s))" if len(rows) > 6 else ""
    block = (f"```text\n{table}\n```\n\n*The first rows{more} of `searchcomp front` after "
             f"`{run_command()}` on {cpu_line()}, "
             f"{datetime.date.today().isoformat()}; the full output is in "
             "[Reading the results](docs/results.md).*")
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split("<!-- front:start", 1)
    _, tail = rest.split("<!-- front:end -->", 1)
    readme.write_text(f"{head}<!-- front:start (written by docs/regenerate.py) -->\n{block}\n"
                      f"<!-- front:end -->{tail}")


def _front() -> list[dict]:
    out, _ = run(f"searchcomp front {SPACE} --quick --json", stdout_only=True)
    return json.loads(out)["front"]


def ex_budget() -> None:
    sizes = sorted(p["size_mib"] for p in _front())
    limit = math.ceil(sizes[len(sizes) // 2])  # a budget some front points meet
    cmd = f"searchcomp front {SPACE} --quick --max-size-mib {limit}"
    out, s = run(cmd, stdout_only=True)
    write("budget", [(cmd, out)], s)


def ex_export() -> None:
    front = _front()
    smaller = [p for p in front if p["size_mib"] < 0.5 * max(q["size_mib"] for q in front)]
    best = max(smaller or front, key=lambda p: p["accuracy"])
    out_dir = WORK / "exported"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = f"searchcomp export {SPACE} --quick --trial {best['trial']} --out exported"
    out, s = run(cmd)
    card = (out_dir / "card.md").read_text().rstrip("\n")
    write("export", [(cmd, out), ("cat exported/card.md", card)], s)


def ex_workers() -> None:
    cmd = "python bench/workers.py"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "workers.py")], cwd=WORK,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {cmd}\n{r.stderr[-4000:]}")
    write("workers", [(cmd, r.stdout.rstrip("\n"))], time.perf_counter() - t0)


EXAMPLES: dict[str, Callable[[], None]] = {
    "inspect": ex_inspect, "inspect-resnet50": ex_inspect_resnet50,
    "device-error": ex_device_error, "run": ex_run, "front": ex_front, "budget": ex_budget,
    "export": ex_export, "workers": ex_workers}
#: run only when named: long benches
ON_REQUEST = {"workers"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", choices=[[], *EXAMPLES], metavar="NAME",
                   help=f"examples to run (default: all but {', '.join(sorted(ON_REQUEST))})")
    p.add_argument("--list", action="store_true", help="list the examples and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(EXAMPLES))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    for link in ("spaces", "examples"):
        if not (WORK / link).exists():
            (WORK / link).symlink_to(ROOT / link)
    for name in args.names or [n for n in EXAMPLES if n not in ON_REQUEST]:
        EXAMPLES[name]()


if __name__ == "__main__":
    main()
