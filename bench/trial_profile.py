"""Where a trial's wall time goes, and how fast its fine-tune trains against a bare loop.

    python bench/trial_profile.py [--spaces resnet18-fashion resnet50] [--settings quick full]
                                  [--full-steps 20] [--repeats 2] [--device DEV]

For each shipped space and each of its settings (``quick``: the space's --quick section;
``full``: the file as is), prepares the study context once (data, base, teacher logits) and
runs real trials of three recipes (the base itself, every block ``separable``, and one mixed
recipe drawn from the space with a fixed seed), after one warm-up trial. It prints each phase
of a trial: build (prune / replace, with its local fits / quantize), fine-tune, evaluation,
measurement, saving, and the share of everything but the fine-tune.

Then the fine-tune's speed in images/s on the mixed recipe: as configured (precision and
cached teacher logits), as searchcomp trained before (fp32, a teacher forward per step), and a
bare training loop of the same model at the configured precision (forward, cross-entropy,
backward, step: nothing else), interleaved ``--repeats`` times; the best of each is kept.

Bounded where the real thing takes hours on a CPU (and said so in the output):
- full settings fine-tune ``--full-steps`` steps; the fine-tune time is scaled to the
  configured number of steps (the other phases do not depend on it and are measured as is);
- resnet50 (CIFAR-10) needs a download this machine cannot make: it runs on Fashion-MNIST at
  the space's 32x32 (one input channel instead of three), from an untrained base saved as a
  checkpoint (training it takes hours here; timing does not depend on the weights).
Every figure is wall-clock on a machine that may be shared: the load average before and after
is printed; CPU seconds of the process are printed next to wall seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from searchcomp.candidate import Recipe, build, uniform_recipe  # noqa: E402
from searchcomp.compute import Compute, cpu_flags, cpu_model  # noqa: E402
from searchcomp.config import load_space  # noqa: E402
from searchcomp.models import build_model  # noqa: E402
from searchcomp.search.trial import prepare, run_trial  # noqa: E402
from searchcomp.train import finetune, total_steps  # noqa: E402

SUBSTITUTE = {  # space -> overrides that let it run offline, and why
    "resnet50": (["data.dataset=fashion_mnist", "model.in_channels=1"],
                 "CIFAR-10 is not on this machine: Fashion-MNIST at 32x32, 1 channel"),
}
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


class Clock:
    """Wall and CPU seconds of named phases (CPU: this process, every thread)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c


def _patch_fits(clock: Clock) -> None:
    """Time every local fit (``fit_local``, imported by name into the choice modules)."""
    import searchcomp.choices.fit as fit

    original = fit.fit_local

    def timed(*a, **k):
        with clock("fits"):
            return original(*a, **k)

    for mod in list(sys.modules.values()):
        if getattr(mod, "fit_local", None) is original:
            mod.fit_local = timed


def _mixed(ctx, seed: int = 3) -> Recipe:
    rng = random.Random(seed)
    blocks = {b.name: {k: rng.choice(v) for k, v in b.values().items()} for b in ctx.blocks}
    return Recipe(blocks, rng.choice(list(ctx.space.blocks.head)))


def _bare_loop(model, batches, steps: int, compute: Compute) -> float:
    """Images/s of forward + cross-entropy + backward + Adam step, nothing else."""
    model.train()
    compute.train_layout(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    done = 0
    seen = 0
    t0 = time.perf_counter()
    while done < steps:
        for x, y in batches:
            with compute.autocast():
                out = model(compute.inputs(x))
            loss = torch.nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            seen += len(y)
            if done >= steps:
                break
    float(loss.detach())  # wait for the device
    return seen / (time.perf_counter() - t0)


def _finetune_rate(ctx, recipe: Recipe, steps: int, compute: Compute, cached: bool) -> float:
    built = build(ctx.base, recipe, ctx.blocks, ctx.head_name, ctx.calib,
                  prune_criterion=ctx.space.finetune.prune_criterion,
                  grad_batches=ctx.grad_batches, prune_round_to=ctx.space.blocks.prune_round_to)
    cfg = ctx.space.finetune.model_copy(update={"steps": steps, "min_accuracy": None})
    train = ctx.splits.train.reseeded(7)
    res = finetune(built.model, ctx.base, train, ctx.splits.val, cfg, compute=compute,
                   teacher_logits=ctx.teacher_logits if cached else None)
    return res.steps * train.batch_size / res.seconds


def _bare_rate(ctx, recipe: Recipe, steps: int) -> float:
    built = build(ctx.base, recipe, ctx.blocks, ctx.head_name, ctx.calib,
                  prune_criterion=ctx.space.finetune.prune_criterion,
                  grad_batches=ctx.grad_batches, prune_round_to=ctx.space.blocks.prune_round_to)
    return _bare_loop(built.model, ctx.splits.train.reseeded(7), steps, ctx.compute)


def _untrained_checkpoint(space, folder: Path) -> str:
    torch.manual_seed(0)
    path = folder / f"{space.name}-untrained.pt"
    torch.save(build_model(space.model).state_dict(), path)
    return str(path)


def profile(space_name: str, settings: str, args, tmp: Path) -> None:
    quick = settings == "quick"
    overrides = [f"studies_dir={args.studies}", "finetune.min_accuracy=null"] + list(args.set)
    notes = []
    sub, why = SUBSTITUTE.get(space_name, ([], ""))
    if sub:
        overrides += sub
        notes.append(why)
    file = ROOT / "spaces" / f"{space_name}.yaml"
    space = load_space(file, overrides, quick=quick)
    if sub:
        ckpt = _untrained_checkpoint(space, tmp)
        overrides += ["base.source=checkpoint", f"base.path={ckpt}",
                      f"model.small_input={str(bool(space.model.small_input)).lower()}"]
        notes.append("untrained base (a checkpoint of fresh weights)")
    space = load_space(file, overrides, quick=quick)
    clock = Clock()
    with clock("prepare"):
        ctx = prepare(space, progress=False, log=lambda m: None, device=args.device,
                      study_name=f"_profile-{space.name}")
    ctx.weights_dir = tmp / "trials"  # the profiled trials' weights are thrown away
    real_steps = total_steps(space.finetune, ctx.splits.train)
    steps = real_steps
    if not quick and real_steps > args.full_steps:
        steps = args.full_steps
        space = load_space(file, [*overrides, f"finetune.steps={steps}"], quick=quick)
        ctx.space = space
        notes.append(f"fine-tune measured on {steps} of its {real_steps} steps and scaled")
    scale = real_steps / steps
    m = space.model
    print(f"\n## {space_name} {settings}: {m.arch} {m.in_channels}x{m.image_size}x"
          f"{m.image_size}, train {ctx.splits.train.size}, val {ctx.splits.val.size}, batch "
          f"{space.data.batch_size}, fine-tune {real_steps} steps; {ctx.compute.describe()}")
    for n in notes:
        print(f"   ({n})")
    print(f"   prepare (data, base, teacher logits): {clock.wall['prepare']:.1f} s once per "
          "study")
    recipes = {"base": Recipe(), "separable": uniform_recipe(ctx.blocks, conv="separable"),
               "mixed": _mixed(ctx)}
    print(f"   mixed = {recipes['mixed'].summary(ctx.block_names)}")
    run_trial(ctx, recipes["mixed"], 0, "warmup")  # first-call costs (kernels, allocator)
    head = (f"   {'recipe':<10}{'total s':>9}{'prune':>8}{'replace':>9}{'(fits)':>8}"
            f"{'quant':>7}{'finetune':>10}{'eval':>7}{'measure':>9}{'save':>6}"
            f"{'not fine-tune':>15}{'CPU s':>8}")
    print(head)
    for name, recipe in recipes.items():
        fits = Clock()
        _patch_fits(fits)
        c0 = time.process_time()
        out = run_trial(ctx, recipe, 1, f"profile-{name}")
        cpu = time.process_time() - c0
        s = dict(out.phase_seconds)
        s["finetune"] *= scale
        other = s["build"] + s["evaluate"] + s["measure"] + s["save"]
        total = other + s["finetune"]
        print(f"   {name:<10}{total:>9.1f}{s['build.prune']:>8.2f}{s['build.replace']:>9.2f}"
              f"{fits.wall.get('fits', 0.0):>8.2f}{s['build.quantize']:>7.2f}"
              f"{s['finetune']:>10.1f}{s['evaluate']:>7.2f}{s['measure']:>9.2f}"
              f"{s['save']:>6.2f}{100 * other / total:>14.1f}%{cpu:>8.1f}")
    rates: dict[str, list[float]] = {"configured": [], "before": [], "bare": []}
    mixed = recipes["mixed"]
    n = min(steps, args.rate_steps)
    fp32 = Compute(ctx.compute.device)
    for _ in range(args.repeats):
        rates["configured"].append(_finetune_rate(ctx, mixed, n, ctx.compute, cached=True))
        rates["bare"].append(_bare_rate(ctx, mixed, n))
        rates["before"].append(_finetune_rate(ctx, mixed, n, fp32, cached=False))
    best = {k: max(v) for k, v in rates.items()}
    print(f"   fine-tune of the mixed recipe, {n} steps, best of {args.repeats}: "
          f"{best['configured']:.0f} img/s as configured ({ctx.compute.precision}, cached "
          f"teacher) = {100 * best['configured'] / best['bare']:.0f}% of a bare "
          f"{ctx.compute.precision} loop ({best['bare']:.0f} img/s); "
          f"{best['before']:.0f} img/s in fp32 with a teacher forward per step: "
          f"{best['configured'] / best['before']:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spaces", nargs="+", default=["resnet18-fashion", "resnet50"])
    p.add_argument("--settings", nargs="+", default=["quick", "full"],
                   choices=["quick", "full"])
    p.add_argument("--full-steps", type=int, default=20,
                   help="fine-tune steps actually run for full settings (scaled after)")
    p.add_argument("--rate-steps", type=int, default=20, help="steps of each img/s run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default=None, help="override the spaces' device")
    p.add_argument("--studies", default=str(ROOT / "studies"),
                   help="where bases are cached (default: the repository's studies/)")
    p.add_argument("--set", action="append", default=[], help="extra --set for every space")
    args = p.parse_args()
    import onnxruntime

    flags = cpu_flags()
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores; flags: "
          + " ".join(f for f in FLAGS if f in flags) + f"; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, {torch.get_num_threads()} torch threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.spaces:
            for settings in args.settings:
                profile(name, settings, args, Path(tmp))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
