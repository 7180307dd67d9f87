"""The search against what a user gets in one minute without it, at equal compute.

    python bench/baselines.py [--setting quick|medium] [--seeds 0 1 2] [--budget 12]
                              [--runtimes torch onnxruntime-int8]
                              [--strategies rungs surrogate tpe nsga2 random greedy]
                              [--html FILE] [--set KEY=VALUE ...]

On ``spaces/resnet18-fashion.yaml`` with 2,000 validation images, at its ``--quick``
settings (16x16, 2,000 training images) or a medium one (28x28, 10,000 training images),
every strategy and seed runs in its own study (``bl-<setting>-<runtime>-<strategy>-s<seed>``
under studies/; a rerun resumes) with the same compute budget in full fine-tune equivalents
(steps spent / steps of the full fine-tune; the anchors count): the rungs strategy, the
surrogate sampler, TPE, NSGA-II and random sampling (each fully fine-tuning every candidate),
and the faithful greedy (threshold 0.70, its own number of steps). Beside them, once per
seed: Torch-Pruning's own uniform pruner (``tp.pruner.MagnitudePruner``, the whole network,
L2 magnitude, the head ignored) at ratios 0.25 / 0.5 / 0.75 with the same fine-tune from the
same base, measured in the same runtime (in ``onnxruntime-int8``: then quantized by
onnxruntime's own ``quantize_static``, QDQ, per channel, calibrated on the same images).

Prints the CPU and versions, and per runtime: the hypervolume (mean +- sd over seeds) at the
budget and at a quarter of it, the compute each strategy needed to reach NSGA-II's final
mean hypervolume, the hypervolume at NSGA-II's mean wall time, how many of the baseline
points (the Torch-Pruning points and, in int8, the all-8-bit base) each front dominates
(fronts and baselines with every distinct architecture timed again, interleaved:
:func:`fair_latency`), and the Kendall tau of rung-0 and rung-1 accuracy against full accuracy over the rungs
studies' trials that have both; writes a plotly HTML of hypervolume against compute.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from searchcomp.config import load_space  # noqa: E402
from searchcomp.deploy.cpu import cpu_model, features_label  # noqa: E402
from searchcomp.search.api import run_search  # noqa: E402
from searchcomp.search.front import dominates, hypervolume, normalized  # noqa: E402
from searchcomp.search.rungs import STEPS_SPENT  # noqa: E402
from searchcomp.search.study import open_study, trial_row  # noqa: E402

STRATEGIES = ("rungs", "surrogate", "tpe", "nsga2", "random", "greedy")
SETTINGS = {
    "quick": ["data.val_size=2000"],
    "medium": ["model.image_size=28", "data.train_size=10000", "data.val_size=2000",
               "data.test_size=2000", "data.batch_size=64", "base.epochs=3",
               "finetune.steps=80"],
}
TP_RATIOS = (0.25, 0.5, 0.75)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def space_for(args, runtime: str):
    quick = args.setting == "quick"
    return load_space(args.space, [*SETTINGS[args.setting], f"measure.runtime={runtime}",
                                   "search.trials=400", *args.overrides], quick=quick)


def run_strategy(space, strategy: str, seed: int, budget: float, study: str) -> float:
    """Run one study to the budget; returns its wall seconds (0 when it was already done)."""
    t0 = time.perf_counter()
    kw = dict(study_name=study, seed=seed, quiet=True, log=log)
    if strategy == "greedy":
        run_search(space, strategy="greedy", threshold=0.70, **kw)
    elif strategy == "rungs":
        run_search(space, strategy="rungs", budget=budget, **kw)
    else:
        run_search(space, strategy="search", sampler=strategy, budget=budget, **kw)
    return time.perf_counter() - t0


def study_rows(space, study: str) -> tuple[list[dict], dict, int]:
    """Every trial's row in the order they finished, the base, and the full fine-tune's
    steps."""
    s = open_study(space, study_name=study, load_only=True)
    trials = sorted((t for t in s.get_trials() if t.datetime_complete is not None),
                    key=lambda t: t.datetime_complete)
    rows = []
    for t in trials:
        r = trial_row(t, list(space.objectives))
        r["attrs"] = dict(t.user_attrs)
        r["steps"] = int(t.user_attrs.get(STEPS_SPENT, t.user_attrs.get("finetune_steps", 0))
                         or 0)
        r["wall"] = (t.datetime_complete - trials[0].datetime_start).total_seconds()
        rows.append(r)
    full = max([int(t.user_attrs.get("finetune_steps", 0) or 0) for t in trials] + [1])
    return rows, dict(s.user_attrs["base"]), full


def curve(rows, objectives, base, full) -> list[tuple[float, float, float]]:
    """(compute in full fine-tunes, wall s, hypervolume of the complete trials) after each
    trial."""
    done, spent, out = [], 0, []
    for r in rows:
        spent += r["steps"]
        if r["state"] == "complete" and r.get("duplicate_of") is None:
            done.append(r)
        out.append((spent / full, r["wall"], hypervolume(done, objectives, base)))
    return out


def at(points, x: float, axis: int = 0) -> float:
    """The curve's hypervolume once ``x`` compute (axis 0) or wall seconds (axis 1) is spent."""
    hv = 0.0
    for p in points:
        if p[axis] > x + 1e-9:
            break
        hv = p[2]
    return hv


def candidates(rows) -> list[dict]:
    """The rows a front is drawn from: complete trials that are not copies of another."""
    return [r for r in rows if r["state"] == "complete" and r.get("duplicate_of") is None]


def front_rows(rows, objectives):
    from searchcomp.search.front import pareto_front

    return pareto_front(candidates(rows), objectives)


def fair_front(rows, objectives, fair, strategy, i) -> list[dict]:
    """The front of a study's trials with their latency timed again (:func:`fair_latency`):
    a trial another beat only by a noisy latency of its own run comes back."""
    return front_rows(with_fair(candidates(rows), fair, lambda q: (strategy, i, q["trial"])),
                      objectives)


def dominated(front, points, objectives) -> int:
    def key(r):
        return normalized(r, objectives, {o: 1.0 for o in objectives})

    return sum(any(dominates(key(q), key(p)) for q in front) for p in points)


# -- Torch-Pruning's uniform pruner ---------------------------------------------------------

def tp_points(space, seed: int, runtime: str) -> list[dict]:
    """Torch-Pruning's MagnitudePruner at each ratio, fine-tuned like a trial, measured in
    ``runtime`` (int8: then onnxruntime's own static quantization)."""
    import torch_pruning as tp

    from searchcomp.models import input_shape
    from searchcomp.search.context import measure_model
    from searchcomp.search.trial import prepare
    from searchcomp.train import evaluate, finetune

    ctx = prepare(space, progress=False, log=lambda m: None,
                  study_name=f"bl-tp-{runtime}-s{seed}")
    shape = input_shape(space.model)
    out = []
    for ratio in TP_RATIOS:
        torch.manual_seed(seed)
        model = copy.deepcopy(ctx.base).cpu().eval()
        pruner = tp.pruner.MagnitudePruner(
            model, torch.randn(1, *shape), importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio, ignored_layers=[model.get_submodule(ctx.head_name)])
        pruner.step()
        t0 = time.perf_counter()
        finetune(model, ctx.base, ctx.splits.train.reseeded(seed), ctx.splits.val,
                 space.finetune, compute=ctx.compute, teacher_logits=ctx.teacher_logits)
        ft_s = time.perf_counter() - t0
        acc = evaluate(model, ctx.splits.val, ctx.compute)
        model.cpu().eval()
        if runtime == "onnxruntime-int8":
            met = ort_static_int8(model, shape, ctx, space)
            met["accuracy"] = met.pop("file_accuracy")
            met["_arch"] = "onnxruntime quantize_static " + architecture(model)
        else:
            met = measure_model(model, space, torch.device("cpu"), ctx.calib)
            met["accuracy"] = acc
            met["_arch"] = architecture(model)
            met["_timer"] = (lambda m=model: measure_model(m, space, torch.device("cpu"),
                                                           ctx.calib)["latency_ms"])
        out.append({"trial": f"tp{ratio:g}", "state": "complete", "ratio": ratio,
                    "finetune_s": ft_s, **met})
    return out


def fair_latency(space, per, tps, rounds: int) -> dict[tuple, float]:
    """Every complete trial of every study and every Torch-Pruning point timed again in
    one process, interleaved: ``rounds`` rounds, each timing every distinct architecture once
    (the space's runs), the median of the round medians kept. Points measured at different
    times under different load are not comparable to a few percent, and even interleaved, two
    copies of one network differed by up to 10 % (run to run at batch 1, 1 thread): so each
    architecture (:func:`architecture`) is timed once and its figure given to every point that
    has it, e.g. the anchor ``prune=0.5 width=0.5`` and Torch-Pruning's uniform 0.5.
    Keys: ``(strategy, seed index, trial)`` and ``("tp", seed index, ratio)``."""
    from searchcomp.search.context import measure_model
    from searchcomp.search.remeasure import rebuild_trial
    from searchcomp.search.trial import prepare

    timers: dict[str, object] = {}  # architecture signature -> its timer
    arch: dict[tuple, str] = {}     # point key -> architecture signature
    for i, tp_rows in enumerate(tps):
        for t in tp_rows:
            arch[("tp", i, t["ratio"])] = t["_arch"]
            timers.setdefault(t["_arch"], t["_timer"])
    ctx = prepare(space, progress=False, log=lambda m: None, study_name="bl-fair")
    for strategy, runs in per.items():
        for i, r in enumerate(runs):
            attrs = {x["trial"]: x["attrs"] for x in r["rows"]}
            for q in candidates(r["rows"]):
                model = rebuild_trial(ctx, attrs[q["trial"]])
                sig = architecture(model)
                arch[(strategy, i, q["trial"])] = sig
                timers.setdefault(sig, lambda m=model: measure_model(
                    m, space, torch.device("cpu"), ctx.calib)["latency_ms"])
    log(f"fair latency: {len(arch)} points, {len(timers)} distinct architectures, {rounds} "
        "interleaved rounds")
    seen: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(rounds):
        for k, timer in timers.items():
            seen[k].append(timer())
    return {key: statistics.median(seen[sig]) for key, sig in arch.items()}


def architecture(model: torch.nn.Module) -> str:
    """What a network's latency depends on: its modules (with their strides, groups, bit
    widths as ``repr`` shows them) and every tensor's shape, not the weights' values. Two
    networks with one signature are the same program and are timed once."""
    shapes = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
    return hashlib.sha1(f"{model!r}{shapes}".encode()).hexdigest()


def ort_static_int8(model, shape, ctx, space) -> dict:
    """onnxruntime's own static quantization of ``model`` (QDQ, per channel, u8 activations,
    MinMax on the calibration images), as a user would run it: size, latency and the file's
    validation accuracy."""
    import tempfile

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from searchcomp.deploy.onnx import export_onnx
    from searchcomp.measure.latency import time_runs
    from searchcomp.search.int8_scheme import file_accuracy

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.it = iter([{name: ctx.calib[i:i + 16].cpu().numpy()}
                            for i in range(0, len(ctx.calib), 16)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        f32, q8 = f"{tmp}/m.onnx", f"{tmp}/m.int8.onnx"
        export_onnx(model, torch.zeros(1, *shape), f32)
        name = ort.InferenceSession(f32, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        quantize_static(f32, q8, Reader(name), quant_format=QuantFormat.QDQ, per_channel=True)
        data = Path(q8).read_bytes()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = space.measure.threads
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    x = {name: torch.randn(space.measure.batch_size, *shape).numpy()}
    def timer() -> float:
        return statistics.median(time_runs(lambda: sess.run(None, x), space.measure.runs,
                                           space.measure.warmup))

    return {"size_mib": len(data) / 2**20, "latency_ms": timer(), "_timer": timer,
            "params": sum(p.numel() for p in model.parameters()),
            "file_accuracy": file_accuracy(data, ctx.splits.val)}


def kendall(rows) -> dict[str, float | None]:
    from scipy.stats import kendalltau

    out = {}
    for rung in ("0", "1"):
        pairs = [(float(r["rung_accuracy"][rung]), float(r["accuracy"])) for r in rows
                 if r["state"] == "complete" and rung in (r.get("rung_accuracy") or {})]
        out[rung] = (float(kendalltau(*zip(*pairs, strict=True))[0]) if len(pairs) >= 4
                     else None, len(pairs))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="spaces/resnet18-fashion.yaml")
    p.add_argument("--setting", choices=SETTINGS, default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget", type=float, default=12.0, help="full fine-tune equivalents")
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime-int8"])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--html", default="studies/baselines.html")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds of the fair latency of fronts and baselines")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    import onnxruntime

    print(f"cpu {cpu_model()}: {features_label()}; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, python {platform.python_version()}")
    print(f"setting {args.setting}: {' '.join(SETTINGS[args.setting])}; budget "
          f"{args.budget:g} full fine-tunes; seeds {args.seeds}")
    results = {}
    for runtime in args.runtimes:
        space = space_for(args, runtime)
        objectives = list(space.objectives)
        per: dict[str, list] = {s: [] for s in args.strategies}
        tps = []
        for seed in args.seeds:
            for strategy in args.strategies:
                study = f"bl-{args.setting}-{runtime}-{strategy}-s{seed}"
                log(f"== {study}")
                wall = run_strategy(space, strategy, seed, args.budget, study)
                rows, base, full = study_rows(space, study)
                per[strategy].append({"rows": rows, "base": base, "full": full, "wall": wall,
                                      "curve": curve(rows, objectives, base, full)})
            log(f"== Torch-Pruning uniform, seed {seed}, {runtime}")
            tps.append(tp_points(space, seed, runtime))
        results[runtime] = (space, per, tps)
        fair = fair_latency(space, per, tps, args.rounds)
        report(runtime, space, per, tps, args, fair)
    plot(results, args.html)


def with_fair(rows, fair, key) -> list[dict]:
    """Rows whose latency is the interleaved figure ``fair[key(row)]`` where there is one."""
    return [{**r, "latency_ms": fair.get(key(r), r["latency_ms"])} for r in rows]


def report(runtime, space, per, tps, args, fair) -> None:
    objectives = list(space.objectives)
    print()
    print(f"## {runtime}: {space.model.arch} {space.model.image_size}x{space.model.image_size},"
          f" train {space.data.train_size}, val {space.data.val_size}; objectives "
          f"{', '.join(objectives)}")
    ref = per.get("nsga2")
    ref_hv = statistics.mean(r["curve"][-1][2] for r in ref) if ref else None
    ref_wall = statistics.mean(r["curve"][-1][1] for r in ref) if ref else None
    print(f"{'strategy':<10} {'HV at budget':>15} {'HV at 1/4':>15} {'compute':>8} "
          f"{'to NSGA-II HV':>13} {'HV at NSGA-II wall':>18} {'beats TP/int8':>13} "
          f"{'front':>5} {'trials':>6} {'wall s':>7}")
    for strategy, runs in per.items():
        hv = [r["curve"][-1][2] if r["curve"] else 0.0 for r in runs]
        quarter = [at(r["curve"], args.budget / 4) for r in runs]
        used = [r["curve"][-1][0] if r["curve"] else 0.0 for r in runs]
        reach = []
        for r in runs:
            hit = next((c for c, _, h in r["curve"] if ref_hv is not None and h >= ref_hv),
                       None)
            reach.append(hit)
        wall_hv = [at(r["curve"], ref_wall, axis=1) for r in runs] if ref_wall else []
        beat = []
        for i, (r, tp_rows) in enumerate(zip(runs, tps, strict=True)):
            points = with_fair(tp_rows, fair, lambda t, i=i: ("tp", i, t["ratio"]))
            if runtime == "onnxruntime-int8":
                points += with_fair([x for x in r["rows"] if x.get("tag") in (
                    "anchor bits=8", "anchor bits=8 (int8)")], fair,
                    lambda q, i=i, s=strategy: (s, i, q["trial"]))
            front = fair_front(r["rows"], objectives, fair, strategy, i)
            beat.append(f"{dominated(front, points, objectives)}/{len(points)}")
        fr = [len(fair_front(r["rows"], objectives, fair, strategy, i))
              for i, r in enumerate(runs)]
        print(f"{strategy:<10} {_ms(hv):>15} {_ms(quarter):>15} {statistics.mean(used):8.1f} "
              f"{_reach(reach):>13} {_ms(wall_hv) if wall_hv else '-':>18} "
              f"{','.join(beat):>13} {statistics.mean(fr):5.1f} "
              f"{statistics.mean(len(r['rows']) for r in runs):6.1f} "
              f"{statistics.mean(r['curve'][-1][1] if r['curve'] else 0 for r in runs):7.0f}")
    print(f"beats TP/int8: baseline points a front dominates; front, front size and these "
          f"with every trial's and baseline's latency timed again, per architecture, "
          f"interleaved in one process ({args.rounds} rounds, median); hypervolumes with each "
          f"run's own latencies")
    for i, (seed, tp_rows) in enumerate(zip(args.seeds, tps, strict=True)):
        for t in tp_rows:
            lat = fair[("tp", i, t["ratio"])]
            print(f"Torch-Pruning uniform {t['ratio']:g}, seed {seed}: acc {t['accuracy']:.4f} "
                  f"{t['size_mib']:.2f} MiB {lat:.2f} ms (in its run {t['latency_ms']:.2f});"
                  " nearest front point at >= its accuracy:")
            for strategy, runs in per.items():
                front = fair_front(runs[i]["rows"], objectives, fair, strategy, i)
                up = [q for q in front if q["accuracy"] >= t["accuracy"]]
                if not up:
                    print(f"    {strategy:<10} none")
                    continue
                q = min(up, key=lambda q: (q["latency_ms"], q["size_mib"]))
                won = dominated([q], [{**t, "latency_ms": lat}], objectives)
                print(f"    {strategy:<10} trial {q['trial']} acc {q['accuracy']:.4f} "
                      f"{q['size_mib']:.2f} MiB {q['latency_ms']:.2f} ms"
                      f"{' (anchor)' if str(q.get('tag', '')).startswith('anchor') else ''}"
                      f"{'  dominates it' if won else ''}")
    if "rungs" in per:
        rows = [x for r in per["rungs"] for x in r["rows"]]
        tau = kendall(rows)
        print("rungs: Kendall tau against full accuracy (complete trials with both; they are "
              "the ones promoted, plus the anchors): "
              + ", ".join(f"rung {k}: {'-' if v is None else f'{v:.2f}'} over {n}"
                          for k, (v, n) in tau.items()))
        rung = [r for r in rows if r.get("rung_accuracy")]
        stopped = sum(r["state"] == "stopped" for r in rung)
        print(f"rungs: {len(rung)} candidates scored, {stopped} stopped early")
    print(json.dumps({"runtime": runtime, "nsga2_final_hv": ref_hv}))


def _ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f}+-{sd:.4f}"


def _reach(values) -> str:
    hit = [v for v in values if v is not None]
    return f"{statistics.mean(hit):.1f} ({len(hit)}/{len(values)})" if hit else "never"


def plot(results, path: str) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(results), subplot_titles=list(results))
    for col, (_runtime, (_space, per, _tps)) in enumerate(results.items(), start=1):
        for strategy, runs in per.items():
            grid = np.linspace(0, max(r["curve"][-1][0] for r in runs if r["curve"]), 60)
            ys = np.array([[at(r["curve"], x) for x in grid] for r in runs])
            fig.add_trace(go.Scatter(x=grid, y=ys.mean(0), name=strategy, mode="lines",
                                     legendgroup=strategy, showlegend=col == 1),
                          row=1, col=col)
        fig.update_xaxes(title_text="compute (full fine-tune equivalents)", row=1, col=col)
    fig.update_yaxes(title_text="hypervolume (mean over seeds)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs="cdn")
    print(f"curves: {path}")


if __name__ == "__main__":
    main()
