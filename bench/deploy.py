"""Real int8 on this CPU: the fp32 base, the int8 base and an onnxruntime-int8 search's front.

    python bench/deploy.py [--budget 40] [--strategy search] [--steps 150]
                           [--train-size 20000] [--epochs 4] [--image-size 28] [--runs 100]
                           [--seeds] [--set KEY=VALUE ...]

On ``spaces/resnet18-fashion.yaml`` with a base trained to >= 0.88 validation accuracy (the
settings are printed), runs a search whose ``measure.runtime`` is ``onnxruntime-int8`` (every
block at 8, 4 or 2 bits, so every block runs int8 kernels; pruning and separable convs
allowed) with the study's anchors (the one-minute baselines) and no hand-placed recipes
(``--seeds`` adds the four recipes earlier runs placed by hand, and says so), exports each
front point as the int8 ONNX file it was measured as, and prints for
the fp32 base (onnxruntime, float kernels), the int8 base (every block at 8 bits, calibrated,
not fine-tuned) and each front point: validation accuracy (the search's, simulated), test
accuracy of the file itself, the drop against the fp32 base, file MiB and the size ratio,
latency and the speed-up, all in the same runtime on this machine, and the int8 scheme the
study chose on this CPU. Target: a front point >= 5x faster and >= 16x smaller than the fp32
base at <= 0.5 pt test-accuracy drop, with the base >= 0.90 validation accuracy.
The study (``<space name>-deploy``) and the exports go under studies/.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime  # noqa: E402
import torch  # noqa: E402

from searchcomp.candidate import Recipe, build, uniform_recipe  # noqa: E402
from searchcomp.config import load_space  # noqa: E402
from searchcomp.deploy.cpu import cpu_model, features_label  # noqa: E402
from searchcomp.deploy.formats import FORMATS, write_artifact  # noqa: E402
from searchcomp.deploy.int8 import int8_kernels  # noqa: E402
from searchcomp.deploy.load import load  # noqa: E402
from searchcomp.measure import time_artifact  # noqa: E402
from searchcomp.models import input_shape  # noqa: E402
from searchcomp.results import load_results  # noqa: E402
from searchcomp.results.export import export_trial  # noqa: E402
from searchcomp.search.api import run_search  # noqa: E402
from searchcomp.search.trial import prepare  # noqa: E402
from searchcomp.train import evaluate  # noqa: E402

# everything a long run uses, loaded now: later edits of the tree do not change this run
for _module in ("searchcomp.deploy.onnx", "searchcomp.deploy.onnx_codes",
                "searchcomp.deploy.integer", "searchcomp.deploy.packed",
                "searchcomp.choices.actquant", "searchcomp.choices.prune",
                "searchcomp.search.runner", "searchcomp.search.study",
                "onnxruntime.quantization"):
    importlib.import_module(_module)

SEEDS = "[{bits: 8}, {bits: 4}, {bits: 4, prune: 0.25}, {bits: 2}]"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="spaces/resnet18-fashion.yaml")
    p.add_argument("--budget", type=float, default=40.0,
                   help="compute, in full fine-tunes (the anchors count)")
    p.add_argument("--strategy", choices=["rungs", "search"], default="search")
    p.add_argument("--seeds", action="store_true",
                   help="also queue the hand-placed recipes of earlier runs (labelled)")
    p.add_argument("--steps", type=int, default=150, help="fine-tune steps per trial")
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=4, help="base training epochs")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--runs", type=int, default=100, help="timed runs per latency")
    p.add_argument("--study", help="default: <space name>-deploy")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    overrides = [f"model.image_size={args.image_size}", f"data.train_size={args.train_size}",
                 "data.val_size=2000", "data.test_size=5000", "data.batch_size=64",
                 f"base.epochs={args.epochs}", "blocks.default.conv=[keep, separable]",
                 "blocks.default.prune=[0.0, 0.25, 0.5]", "blocks.default.bits=[8, 4, 2]",
                 "blocks.head=[keep]", f"finetune.steps={args.steps}",
                 "measure.runtime=onnxruntime-int8", f"measure.runs={args.runs}",
                 "search.trials=400", f"search.strategy={args.strategy}",
                 f"search.seed_configs={SEEDS if args.seeds else '[]'}", *args.overrides]
    space = load_space(args.space, overrides)
    study = args.study or f"{space.name}-deploy"
    print(f"cpu {cpu_model()}: {features_label()}; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, python {platform.python_version()}")
    mm = space.measure
    print(f"space {space.file}: {space.model.arch} {space.model.image_size}x"
          f"{space.model.image_size}, train {space.data.train_size} / val "
          f"{space.data.val_size} / test {space.data.test_size} images, base {space.base.epochs} "
          f"epochs; search: strategy {args.strategy}, budget {args.budget:g} full fine-tunes of "
          f"{args.steps} steps (batch {space.data.batch_size}), runtime {mm.runtime}, "
          f"{mm.threads} thread, batch {mm.batch_size}, median of {mm.runs} runs; "
          + (f"hand-placed seed recipes: {SEEDS}" if args.seeds else "no hand-placed recipes"))
    t0 = time.perf_counter()
    summary = run_search(space, study_name=study, quiet=True, log=log, budget=args.budget)
    t_search = time.perf_counter() - t0
    res = load_results(space, study_name=study)
    base_val = res.base["accuracy"]
    print(f"base validation accuracy {base_val:.4f} ({'>=' if base_val >= 0.90 else '<'} 0.90); "
          f"search {t_search / 60:.0f} min, {len(res.rows)} trials, front {len(res.front)}, "
          f"compute {summary.compute:.1f} full fine-tunes")

    out_root = Path(space.studies_dir) / study / "exports"
    shutil.rmtree(out_root, ignore_errors=True)
    rows, fp32 = [], None
    for r in sorted(res.front, key=lambda r: -r["accuracy"]):
        card = export_trial(space, r["trial"], out_root / f"trial{r['trial']}", log=log,
                            study_name=study)
        if fp32 is None:
            fp32 = card["base"]
            rows.append(("fp32 base", base_val, fp32, "every block float (onnxruntime, "
                         "float kernels)", None))
            rows.append(("int8 base", None, int8_base(space, fp32["val_accuracy"], study),
                         "every block 8-bit, calibrated, no fine-tune", None))
        kernels = int8_kernels((out_root / f"trial{r['trial']}" / card["file"]).read_bytes())
        what = card["summary"] + (f"  [{r['tag']}]" if r.get("tag") else "")
        rows.append((f"trial {r['trial']}", r["accuracy"], card["exported"], what,
                     (card["accuracy_gap"], kernels.get("QLinearConv", 0))))
    print()
    print(f"{'model':<10} {'val acc':>7} {'test acc':>8} {'drop pt':>7} {'MiB':>7} "
          f"{'smaller':>7} {'ms':>6} {'faster':>6} {'gap pt':>6}  choices")
    met = []
    for name, val, m, what, extra in rows:
        drop = 100 * (fp32["test_accuracy"] - m["test_accuracy"])
        small, fast = fp32["file_mib"] / m["file_mib"], fp32["latency_ms"] / m["latency_ms"]
        gap = f"{100 * extra[0]:+6.2f}" if extra else f"{'':>6}"
        val_s = f"{val:7.4f}" if val is not None else f"{m['val_accuracy']:7.4f}"
        print(f"{name:<10} {val_s} {m['test_accuracy']:8.4f} {drop:7.2f} {m['file_mib']:7.3f} "
              f"{small:6.1f}x {m['latency_ms']:6.2f} {fast:5.1f}x {gap}  {what}")
        if extra and fast >= 5 and small >= 16 and drop <= 0.5:
            met.append(name)
    print()
    print("target (>= 5x faster, >= 16x smaller, <= 0.5 pt test drop vs the fp32 base, base "
          ">= 0.90 val): " + (f"met by {', '.join(met)}" if met else "not met by any front "
                              "point") + ("" if base_val >= 0.90 else " (the base is < 0.90)"))
    print(f"latency: {fp32['runtime']}")
    from searchcomp.deploy.schemes import format_scheme_table

    record = res_scheme(space, study)
    if record:
        print("int8 scheme of the study:")
        for line in format_scheme_table(record):
            print(f"  {line}")


def res_scheme(space, study: str):
    from searchcomp.search.study import open_study

    return open_study(space, study_name=study, load_only=True).user_attrs.get("int8_scheme")


def int8_base(space, fp32_val: float, study: str) -> dict:
    """The base with every block at 8 bits in the int8 runtime, its activations calibrated
    on the training images, not fine-tuned: written as onnx-int8 and measured like a card."""
    ctx = prepare(space, progress=False, log=log, study_name=study)
    recipe = uniform_recipe(ctx.blocks, bits=8)
    model = build(ctx.base, recipe, ctx.blocks, ctx.head_name, ctx.calib,
                  int8=ctx.int8_scheme).model
    shape = input_shape(space.model)
    info = {"format": "onnx-int8", "file": FORMATS["onnx-int8"], "input_shape": list(shape)}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_artifact(model, info, Path(tmp), calib=ctx.calib)
        loaded = load(tmp)
        mm = space.measure
        lat = time_artifact(tmp, batch_size=mm.batch_size, threads=mm.threads, runs=mm.runs,
                            warmup=mm.warmup, loaded=loaded)
        return {"test_accuracy": evaluate(loaded, ctx.splits.test),
                "val_accuracy": evaluate(loaded, ctx.splits.val),
                "file_mib": path.stat().st_size / 2**20, "latency_ms": lat.median_ms,
                "recipe": Recipe().to_dict()}


if __name__ == "__main__":
    main()
