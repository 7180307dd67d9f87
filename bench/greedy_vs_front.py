"""Greedy baseline (source 000) vs the multi-objective search, on the same fine-tune budget.

    python bench/greedy_vs_front.py [SPACE] [--threshold 0.70] [--full] [--set KEY=VALUE ...]

Runs the greedy rule first (it decides its own number of trials), then the search with the
same number of trials, each trial getting the same fine-tune; both in their own studies under
studies/. Prints, for each: best validation accuracy, the smallest MiB among its points whose
accuracy is at least the greedy result's, and the hypervolume (accuracy vs the space's cost
objectives, normalised by the base). Uses the space's --quick settings unless --full.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searchcomp.config import load_space  # noqa: E402
from searchcomp.results import load_results  # noqa: E402
from searchcomp.search.api import run_search  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", default="spaces/resnet18-fashion.yaml")
    p.add_argument("--threshold", type=float, default=0.70)
    p.add_argument("--full", action="store_true", help="the space as is, not its quick: part")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    space = load_space(args.space, args.overrides, quick=not args.full)
    tag = f"{space.name}-bench"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    g = run_search(space, strategy="greedy", threshold=args.threshold,
                   study_name=f"{tag}-greedy", quiet=True, log=log)
    t_greedy = time.perf_counter() - t0
    greedy = load_results(space, study_name=f"{tag}-greedy")
    budget = len(greedy.rows)
    t0 = time.perf_counter()
    run_search(space, trials=budget, study_name=f"{tag}-search", quiet=True, log=log)
    t_search = time.perf_counter() - t0
    search = load_results(space, study_name=f"{tag}-search")

    g_acc = greedy.greedy["accuracy"] if greedy.greedy else greedy.base["accuracy"]
    print(f"\nspace {space.file} ({'full' if args.full else 'quick'}), greedy threshold "
          f"{args.threshold}, budget {budget} fine-tunes of "
          f"{space.finetune.steps or space.finetune.epochs} "
          f"{'steps' if space.finetune.steps else 'epochs'} each")
    print(f"base: val accuracy {greedy.base['accuracy']:.4f}, "
          f"{greedy.base['size_mib']:.2f} MiB, {greedy.base['latency_ms']:.2f} ms")
    print(f"greedy result: trial {g.greedy['result_trial']}, val accuracy {g_acc:.4f}, "
          f"separable on {len(g.greedy['kept'])} block(s)")
    print()
    print(f"{'strategy':<10}{'trials':>7}{'best acc':>10}{'min MiB @ acc>=greedy':>24}"
          f"{'hypervolume':>13}{'front':>7}{'time s':>8}")
    for name, res, secs in (("greedy", greedy, t_greedy), ("search", search, t_search)):
        done = [r for r in res.rows if r["state"] == "complete"]
        best = max((r["accuracy"] for r in done), default=float("nan"))
        ok = [r["size_mib"] for r in done if r["accuracy"] >= g_acc]
        small = f"{min(ok):.3f}" if ok else "none"
        print(f"{name:<10}{len(res.rows):>7}{best:>10.4f}{small:>24}{res.hypervolume:>13.4f}"
              f"{len(res.front):>7}{secs:>8.0f}")


if __name__ == "__main__":
    main()
