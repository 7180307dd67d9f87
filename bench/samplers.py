"""Samplers on the same fine-tune budget: hypervolume against fine-tunes spent.

    python bench/samplers.py [SPACE] [--budget 24] [--seeds 0 1 2]
                             [--strategies surrogate nsga2 tpe random greedy] [--html FILE]

On the space's --quick settings, each strategy and seed runs in its own study
(``<name>-samplers-<strategy>-s<seed>`` under studies/; a rerun resumes, so the seeds can be
run one command at a time): the surrogate sampler, NSGA-II, TPE and random sampling with
``--budget`` trials each, and the faithful (cumulative) greedy baseline with threshold 0.70,
which decides its own number of steps. The sensitivity profile is computed once and copied to
every surrogate study (its rows are keyed by content); its cost is reported in fine-tune
equivalents. Prints the CPU, versions, a table (final hypervolume, fine-tunes to reach
NSGA-II's final hypervolume, the best point against the greedy result within the greedy's
budget, the predictor's Kendall tau on trials it had not seen) and writes a plotly HTML of the
curves. Hypervolumes use one base for every study (the median of their base latencies).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from searchcomp.config import load_space  # noqa: E402
from searchcomp.predict.store import FILE_NAME  # noqa: E402
from searchcomp.results import load_results  # noqa: E402
from searchcomp.search.api import run_search  # noqa: E402
from searchcomp.search.front import hypervolume  # noqa: E402

STRATEGIES = ("surrogate", "nsga2", "tpe", "random", "greedy")


def machine() -> str:
    import torch

    flags = set()
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from searchcomp.predict.latency import _cpu_name

    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
             if f in flags]
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "-"
    return (f"cpu {_cpu_name()} ({', '.join(feats) or 'no avx2'}), {platform.machine()}; "
            f"torch {torch.__version__}, onnxruntime {ort}")


def spent(rows: list[dict]) -> list[dict]:
    """Rows in trial order that cost a fine-tune (a repeated recipe reuses its result)."""
    return [r for r in sorted(rows, key=lambda r: r["trial"]) if r.get("duplicate_of") is None]


def curve(rows: list[dict], objectives: list[str], base: dict) -> list[float]:
    """Hypervolume of the complete trials among the first k fine-tunes, k = 1..n."""
    done, out = [], []
    for r in spent(rows):
        if r["state"] == "complete":
            done.append(r)
        out.append(hypervolume(done, objectives, base))
    return out


def kendall(pairs: list[tuple[float, float]]) -> float | None:
    from scipy.stats import kendalltau

    if len(pairs) < 3:
        return None
    return float(kendalltau(*zip(*pairs, strict=True)).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", default="spaces/resnet18-fashion.yaml")
    p.add_argument("--budget", type=int, default=24, help="fine-tunes per search (default 24)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--threshold", type=float, default=0.70, help="the greedy's (default 0.70)")
    p.add_argument("--html", default="studies/bench-samplers.html")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    space = load_space(args.space, args.overrides, quick=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def name(strategy: str, seed: int) -> str:
        return f"{space.name}-samplers-{strategy}-s{seed}"

    print(machine())
    seconds: dict[tuple[str, int], float] = {}
    profile = None
    if "surrogate" in args.strategies:
        from searchcomp.search.profile import profile_space

        first = name("surrogate", args.seeds[0])
        t0 = time.perf_counter()
        profile = profile_space(space, study_name=first, log=log, progress=False)
        prof_s = time.perf_counter() - t0
        for seed in args.seeds[1:]:  # the same rows: keyed by content, not by study
            dst = space.study_dir(name("surrogate", seed))
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(space.study_dir(first) / FILE_NAME, dst / FILE_NAME)
    for seed in args.seeds:
        for strategy in args.strategies:
            t0 = time.perf_counter()
            if strategy == "greedy":
                run_search(space, strategy="greedy", threshold=args.threshold, seed=seed,
                           study_name=name(strategy, seed), quiet=True, log=log)
            else:
                run_search(space, trials=args.budget, sampler=strategy, seed=seed,
                           study_name=name(strategy, seed), quiet=True, log=log)
            seconds[strategy, seed] = time.perf_counter() - t0

    res = {(s, seed): load_results(space, study_name=name(s, seed), check_latency=True)
           for s in args.strategies for seed in args.seeds}
    any_res = next(iter(res.values()))
    objectives = any_res.objectives
    base = dict(any_res.base)
    base["latency_ms"] = statistics.median(r.base["latency_ms"] for r in res.values())
    curves = {k: curve(r.rows, objectives, base) for k, r in res.items()}

    steps = space.finetune.steps or 0
    if profile is not None:
        rows = [r for r in profile.rows() if r["accuracy"] is not None]
        equiv = len(rows) * space.profile.steps / max(steps, 1)
        cost = sum(r.get("seconds") or 0 for r in rows)
        print(f"profile: {len(rows)} rows x {space.profile.steps} recovery steps = "
              f"{equiv:.1f} fine-tune equivalents of {steps} steps, {cost:.0f} s when computed "
              f"({profile.computed} rows computed in this run, {prof_s:.0f} s)")
    print(f"budget {args.budget} fine-tunes of {steps} steps, seeds {args.seeds}; objectives "
          f"{', '.join(objectives)}; base val acc {base['accuracy']:.4f}, "
          f"{base['size_mib']:.2f} MiB, {base['latency_ms']:.2f} ms (median)")
    print()
    head = (f"{'strategy':<10}{'fine-tunes':>11}{'final HV':>16}{'to NSGA-II final':>18}"
            f"{'vs greedy':>22}{'tau':>7}{'time s':>8}")
    print(head)
    html_curves = {}
    for s in args.strategies:
        finals = [curves[s, seed][-1] for seed in args.seeds if curves[s, seed]]
        n = [len(curves[s, seed]) for seed in args.seeds]
        reach, greedy_cmp, taus = [], [], []
        for seed in args.seeds:
            c = curves[s, seed]
            if "nsga2" in args.strategies and curves["nsga2", seed]:
                goal = curves["nsga2", seed][-1]
                k = next((i + 1 for i, v in enumerate(c) if v >= goal - 1e-12), None)
                reach.append(f"{k}" if k else f">{len(c)}")
            if "greedy" in args.strategies and res["greedy", seed].greedy and s != "greedy":
                g = res["greedy", seed].greedy
                n_g = len(curves["greedy", seed])
                pts = [r for r in spent(res[s, seed].rows)[:n_g] if r["state"] == "complete"
                       and r["accuracy"] >= g["accuracy"]]
                ratio = min((r["size_mib"] for r in pts), default=float("nan")) / g["size_mib"]
                greedy_cmp.append(ratio)
            pairs = [(t["predicted"]["accuracy"], t["accuracy"]) for t in
                     _trials(space, name(s, seed)) if t.get("predicted")]
            if (tau := kendall(pairs)) is not None:
                taus.append(tau)
        html_curves[s] = [curves[s, seed] for seed in args.seeds]
        hv = f"{np.mean(finals):.4f}±{np.std(finals):.4f}" if finals else "-"
        to = ",".join(reach) or "-"
        vs = ",".join("none" if np.isnan(r) else f"{r:.2f}x" for r in greedy_cmp) or "-"
        tau = ",".join(f"{t:.2f}" for t in taus) or "-"
        secs = sum(seconds.get((s, seed), 0) for seed in args.seeds)
        print(f"{s:<10}{'/'.join(map(str, n)):>11}{hv:>16}{to:>18}{vs:>22}{tau:>7}"
              f"{secs:>8.0f}")
    print("\nfinal HV: mean±sd over seeds; to NSGA-II final: fine-tunes until the hypervolume "
          "reaches that seed's NSGA-II final one; vs greedy: smallest MiB among points at least "
          "as accurate as the greedy result within the greedy's own number of fine-tunes, over "
          "the greedy's MiB (target <= 0.25x); tau: Kendall's tau of the predicted (before the "
          "trial ran) and measured validation accuracy of the surrogate's proposals.")
    for seed in args.seeds:
        if "greedy" in args.strategies and res["greedy", seed].greedy:
            g = res["greedy", seed].greedy
            print(f"greedy s{seed}: trial {g['trial']}, val acc {g['accuracy']:.4f}, "
                  f"{g['size_mib']:.3f} MiB, {len(curves['greedy', seed])} fine-tunes")
        lc = res.get(("surrogate", seed))
        if lc is not None and lc.latency_check:
            from searchcomp.results.checks import describe_latency_check

            print(f"surrogate s{seed}: {describe_latency_check(lc.latency_check)}")
    if "surrogate" in args.strategies:
        others = [x for x in args.strategies if x not in ("surrogate", "greedy")]
        for seed in args.seeds:
            tau, n = unseen_tau(space, name("surrogate", seed),
                                [name(x, seed) for x in others], base)
            if tau is not None:
                print(f"predictor fitted on surrogate s{seed}'s trials, on the {n} trials of "
                      f"{'/'.join(others)} s{seed} it never saw: Kendall tau {tau:.2f}")
    _plot(html_curves, args.html, objectives)
    print(f"\ncurves: {args.html}")


def unseen_tau(space, fitted_on: str, others: list[str], base: dict
               ) -> tuple[float | None, int]:
    """Kendall's tau of the predictor fitted on one study's trials (and its profile) on the
    trials of other studies whose recipes it never saw."""
    from searchcomp.models import build_model, find_blocks, find_head
    from searchcomp.predict.assemble import open_tables

    model = build_model(space.model).eval()
    blocks = find_blocks(model, space)
    head, _ = find_head(model, space)
    tables = open_tables(space, model, blocks, head, fitted_on)
    pred = tables.predictor(base)
    seen = _trials(space, fitted_on)
    rows = np.array([tables.layout.encode(t["recipe"]) for t in seen])
    pred.fit(rows, np.array([t["accuracy"] for t in seen]),
             np.array([t["latency_ms"] for t in seen]))
    known = {r.tobytes() for r in rows}
    pairs = []
    for study in others:
        for t in _trials(space, study):
            row = tables.layout.encode(t["recipe"])
            if row.tobytes() not in known:
                pairs.append((float(pred.predict(row[None])["accuracy"][0]), t["accuracy"]))
    return kendall(pairs), len(pairs)


def _trials(space, study_name: str) -> list[dict]:
    from searchcomp.search.study import open_study

    study = open_study(space, study_name=study_name, load_only=True)
    return [{**t.user_attrs} for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and t.user_attrs.get("duplicate_of") is None]


def _plot(curves: dict[str, list[list[float]]], path: str, objectives: list[str]) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    colors = {"surrogate": "#1f5fbf", "nsga2": "#2ca02c", "tpe": "#9467bd",
              "random": "#7f7f7f", "greedy": "#e8710a"}
    for s, runs in curves.items():
        n = max((len(c) for c in runs), default=0)
        if not n:
            continue
        grid = np.array([[c[min(i, len(c) - 1)] for i in range(n)] for c in runs if c])
        x = list(range(1, n + 1))
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(grid.max(0)) + list(grid.min(0))[::-1],
                                 fill="toself", line=dict(width=0), opacity=0.15,
                                 fillcolor=colors.get(s), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=grid.mean(0), name=f"{s} (mean of {len(grid)})",
                                 line=dict(color=colors.get(s), width=2)))
    fig.update_layout(template="plotly_white", title=f"hypervolume ({', '.join(objectives)}) "
                      "against fine-tunes spent; band: min..max over seeds",
                      xaxis_title="fine-tunes spent", yaxis_title="hypervolume")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)
    Path(path).with_suffix(".json").write_text(json.dumps(curves))


if __name__ == "__main__":
    main()
