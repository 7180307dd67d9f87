"""The default fine-tune that does no harm: the unchanged base, and a compressed candidate,
fine-tuned with candidate settings, on a shipped space and a user model.

    python bench/finetune_defaults.py [SPACE ...] [--seeds 2] [--set KEY=VALUE ...] [--full]

Default spaces: spaces/resnet18-fashion.yaml and spaces/vgg-fashion.yaml (the user model of
examples/vgg), both --quick, with 2,000 validation images (``--set data.val_size=2000``) so
a 1 pt change is not lost in the evaluation's own noise. For every setting it fine-tunes,
with each seed, (a) the base with every block ``keep`` and (b) the base with every block's
first conv replacement, e.g. ``separable`` (what a setting must still recover), each from the same base, the same steps
and the same distillation as a trial, and prints a table: the change of the unchanged base's
validation accuracy (mean over seeds) with the 95 % noise of that difference, whether it is
within noise, and the compressed candidate's accuracy. Settings are applied on top of the
space's ``finetune:`` section.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searchcomp.candidate import Recipe, build  # noqa: E402
from searchcomp.choices.actquant import calibrate_activations  # noqa: E402
from searchcomp.config import load_space  # noqa: E402
from searchcomp.deploy.runtime import get_runtime  # noqa: E402
from searchcomp.measure.intervals import difference_noise  # noqa: E402
from searchcomp.search.trial import prepare  # noqa: E402
from searchcomp.train import evaluate, finetune  # noqa: E402

SPACES = ("spaces/resnet18-fashion.yaml", "spaces/vgg-fashion.yaml")
#: name -> changes to the space's finetune: section ({} = the settings as shipped)
SETTINGS = {
    "as shipped": {},
    "adam 5e-4 (the former default)": {"optimizer": "adam", "lr": 5e-4, "warmup": 0.0,
                                       "schedule": "constant", "bn": "train"},
    "adam lr 1e-4": {"optimizer": "adam", "lr": 1e-4, "warmup": 0.0, "schedule": "constant"},
    "adam 5e-4 warm-up+cosine": {"optimizer": "adam", "lr": 5e-4, "warmup": 0.1,
                                 "schedule": "cosine"},
    "adam 5e-4 BN frozen": {"optimizer": "adam", "lr": 5e-4, "bn": "frozen"},
    "adam 1e-4 warm-up+cosine BN frozen": {"optimizer": "adam", "lr": 1e-4, "warmup": 0.1,
                                          "schedule": "cosine", "bn": "frozen"},
    "sgd 0.01 warm-up+cosine": {"optimizer": "sgd", "lr": 0.01, "warmup": 0.1,
                                "schedule": "cosine"},
    "sgd 0.01 warm-up+cosine BN frozen": {"optimizer": "sgd", "lr": 0.01, "warmup": 0.1,
                                          "schedule": "cosine", "bn": "frozen"},
}


def machine() -> str:
    """CPU model, the flags that matter and the library versions."""
    import platform

    import torch

    flags, name = set(), platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115
            if line.startswith("model name") and name == "?":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    feats = [f for f in ("avx2", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return (f"cpu {name} ({', '.join(feats) or 'no avx2'}), {torch.get_num_threads()} "
            f"threads; torch {torch.__version__}")


def fine_tuned_accuracy(ctx, recipe: Recipe, changes: dict, seed: int) -> tuple[float, float]:
    """Validation accuracy of ``recipe`` built from the base and fine-tuned as a trial is, with
    ``changes`` to the fine-tune settings; and the seconds it took."""
    import torch

    space = ctx.space
    cfg = space.finetune.model_copy(update={**changes, "min_accuracy": None})
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    built = build(ctx.base, recipe, ctx.blocks, ctx.head_name, ctx.calib,
                  prune_criterion=cfg.prune_criterion, grad_batches=ctx.grad_batches,
                  prune_round_to=space.blocks.prune_round_to,
                  int8=get_runtime(space.measure.runtime).int8)
    finetune(built.model, ctx.base, ctx.splits.train.reseeded(seed), ctx.splits.val, cfg,
             compute=ctx.compute, teacher_logits=ctx.teacher_logits)
    calibrate_activations(built.model, ctx.calib)
    return evaluate(built.model, ctx.splits.val, ctx.compute), time.perf_counter() - t0


def bench_space(path: str, overrides: list[str], quick: bool, seeds: int,
                settings: dict[str, dict]) -> None:
    space = load_space(path, ["data.val_size=2000", *overrides], quick=quick)
    ctx = prepare(space, progress=False, log=lambda m: print(m, file=sys.stderr, flush=True))
    base_acc = float(ctx.base_metrics["accuracy"])
    n_val = ctx.splits.val.size
    base_row = {"accuracy": base_acc, "val_images": n_val}
    # every block's first conv replacement (separable on the ResNet and the VGG)
    compressed = Recipe({b.name: {"conv": next(c for c in b.allowed("conv") if c != "keep")}
                         for b in ctx.blocks if any(c != "keep" for c in b.allowed("conv"))},
                        "keep")
    ft = space.finetune
    steps = f"{ft.steps} steps" if ft.steps else f"{ft.epochs:g} epoch(s)"
    print(f"\n{space.name} ({'quick' if quick else 'full'}): base val accuracy {base_acc:.4f} on "
          f"{n_val} images; shipped fine-tune: {ft.optimizer} lr {ft.lr:g}, warm-up {ft.warmup:g}, "
          f"{ft.schedule}, {steps}, "
          f"loss {ft.loss}, batch {space.data.batch_size}; {seeds} seed(s) per setting; "
          f"compressed: {compressed.summary(ctx.block_names)}")
    print(f"{'setting':<36} {'unchanged base: Δ acc':>22} {'±noise':>7} {'within':>7} "
          f"{'per seed':>16} {'compressed':>14} {'s/fine-tune':>11}", flush=True)
    for name, changes in settings.items():
        keep, sep, secs = [], [], []
        for seed in range(seeds):
            acc, s = fine_tuned_accuracy(ctx, Recipe(), changes, 1000 + seed)
            keep.append(acc)
            secs.append(s)
            acc, s = fine_tuned_accuracy(ctx, compressed, changes, 1000 + seed)
            sep.append(acc)
            secs.append(s)
        mean = statistics.fmean(keep)
        noise = difference_noise(base_row, {"accuracy": mean, "val_images": n_val})
        delta = mean - base_acc
        ok = "yes" if delta >= -noise else "NO"
        print(f"{name:<36} {100 * delta:>+20.2f}pt {100 * noise:>6.2f} {ok:>7} "
              f"{' '.join(f'{a:.4f}' for a in keep):>16} {statistics.fmean(sep):>14.4f} "
              f"{statistics.fmean(secs):>11.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spaces", nargs="*", default=list(SPACES))
    p.add_argument("--seeds", type=int, default=2, help="fine-tunes per setting (default 2)")
    p.add_argument("--full", action="store_true", help="the spaces as they are, not --quick")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--only", action="append", default=[], metavar="SETTING",
                   help="run only this setting (repeatable), e.g. --only 'as shipped'")
    args = p.parse_args()
    unknown = [n for n in args.only if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; known: {list(SETTINGS)}")
    settings = {n: c for n, c in SETTINGS.items() if not args.only or n in args.only}
    print(machine(), flush=True)
    for path in args.spaces:
        bench_space(path, args.overrides, not args.full, args.seeds, settings)


if __name__ == "__main__":
    main()
