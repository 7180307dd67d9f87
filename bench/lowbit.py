"""Low-bit weights: max-abs scales vs per-channel MSE clipping, 8/4/2 bits, on real data.

    python bench/lowbit.py [SPACE] [--full] [--set KEY=VALUE ...]

For each width, every block of the space's base is quantized uniformly with max-abs
per-channel scales (searchcomp before clipping) and with the clipping ratio that minimises the
squared error per channel (``quantize_module(..., clip="mse")``, the default now), then gets
the space's fine-tune with the same seed. Prints the validation accuracy right after
quantization and after the fine-tune, and the mean relative weight error. Uses the space's
--quick settings unless --full. Weights only, in the torch runtime (no int8 activations).
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from searchcomp.choices.quant import integer_weights, quantize_module, quantized_tensors  # noqa: E402
from searchcomp.config import load_space  # noqa: E402
from searchcomp.deploy.cpu import cpu_model, features_label  # noqa: E402
from searchcomp.search.trial import prepare  # noqa: E402
from searchcomp.train import evaluate, finetune  # noqa: E402


def weight_error(model: torch.nn.Module) -> float:
    """Mean over quantized tensors of ||w_q - w|| / ||w||."""
    errs = []
    for mname, tname, _ in quantized_tensors(model):
        m = model.get_submodule(mname)
        w = m.parametrizations[tname].original.detach()
        q, scale = integer_weights(m, tname)
        wq = q.float() * scale.reshape((-1,) + (1,) * (w.dim() - 1))
        errs.append(float((wq - w).norm() / w.norm().clamp_min(1e-12)))
    return sum(errs) / max(1, len(errs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", default="spaces/resnet18-fashion.yaml")
    p.add_argument("--full", action="store_true", help="the space as is, not its quick: part")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    space = load_space(args.space, args.overrides, quick=not args.full)
    print(f"cpu {cpu_model()}: {features_label()}; torch {torch.__version__}, python "
          f"{platform.python_version()}, {torch.get_num_threads()} threads")
    ctx = prepare(space, progress=False, log=lambda m: print(m, file=sys.stderr, flush=True))
    ft = space.finetune
    steps = ft.steps or f"{ft.epochs:g} epoch(s)"
    print(f"space {space.file}{'' if args.full else ' (quick)'}: {space.model.arch} "
          f"{space.model.image_size}x{space.model.image_size}, train {ctx.splits.train.size}, "
          f"val {ctx.splits.val.size}; fine-tune {steps} steps, lr {ft.lr}, {ft.loss}, seed "
          f"{args.seed}; base val accuracy {ctx.base_metrics['accuracy']:.4f}")
    print(f"{'bits':>4}  {'scales':<11} {'weight err':>10}  {'val acc quantized':>17}  "
          f"{'after fine-tune':>15}")
    for bits in args.bits:
        for clip in ("max", "mse"):
            torch.manual_seed(args.seed)
            model = copy.deepcopy(ctx.base)
            for name in ctx.block_names:
                quantize_module(model.get_submodule(name), bits, clip=clip)
            err = weight_error(model)
            before = evaluate(model, ctx.splits.val)
            finetune(model, ctx.base, ctx.splits.train.reseeded(args.seed), ctx.splits.val,
                     ft.model_copy(update={"min_accuracy": None}))
            after = evaluate(model, ctx.splits.val)
            label = "max-abs" if clip == "max" else "MSE clip"
            print(f"{bits:>4}  {label:<11} {err:>10.4f}  {before:>17.4f}  {after:>15.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
