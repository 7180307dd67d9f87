"""The int8 scheme chosen on this CPU, and what each scheme's file computes on an AVX2-only one.

    python bench/int8_schemes.py [--space spaces/resnet18-fashion.yaml] [--no-quick]
                                 [--emulate-avx2] [--set KEY=VALUE ...]

Prepares the space's study in the ``onnxruntime-int8`` runtime, which chooses the int8 scheme
by measurement (:mod:`searchcomp.search.int8_scheme`: every scheme on the all-8-bit base,
timed like a trial and scored on the validation split), and prints the table it chose from.

With ``--emulate-avx2`` (needs Debian's ``qemu-user``: ``qemu-x86_64``), each scheme's file
is also run under ``qemu-x86_64 -cpu Haswell``, an emulated CPU with AVX2 and no AVX-512 or
VNNI, so onnxruntime's MLAS picks its AVX2 kernels: the validation accuracy of the same
files on such a CPU, and the kernel probe there. Emulated time means nothing, so only
accuracy is printed for it; speed on AVX2 needs a real AVX2 machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402

from searchcomp.candidate import build  # noqa: E402
from searchcomp.config import load_space  # noqa: E402
from searchcomp.config.int8 import SCHEMES  # noqa: E402
from searchcomp.deploy.cpu import cpu_model, features_label  # noqa: E402
from searchcomp.deploy.runtime import get_runtime  # noqa: E402
from searchcomp.deploy.schemes import format_scheme_table  # noqa: E402
from searchcomp.models import input_shape  # noqa: E402
from searchcomp.search.int8_scheme import all_8bit  # noqa: E402
from searchcomp.search.trial import prepare  # noqa: E402

#: what runs inside the emulated CPU: onnxruntime only (torch under emulation is too slow)
EMULATED = r'''
import json, sys
import numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[3])
from searchcomp.deploy.schemes import kernel_exact  # no torch: config and onnxruntime only
x, y = np.load(sys.argv[1] + "/x.npy"), np.load(sys.argv[1] + "/y.npy")
out = {}
for name in json.loads(sys.argv[2]):
    o = ort.SessionOptions(); o.intra_op_num_threads = 1
    s = ort.InferenceSession(sys.argv[1] + f"/{name}.onnx", o, providers=["CPUExecutionProvider"])
    n = s.get_inputs()[0].name
    pred = np.concatenate([s.run(None, {n: x[i:i + 64]})[0].argmax(1) for i in range(0, len(x), 64)])
    out[name] = {"accuracy": float((pred == y).mean()), "exact": kernel_exact(name)}
print(json.dumps(out))
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="spaces/resnet18-fashion.yaml")
    p.add_argument("--no-quick", action="store_true", help="the space's full settings")
    p.add_argument("--emulate-avx2", action="store_true")
    p.add_argument("--study", default=None, help="default: <space name>-int8-schemes")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    space = load_space(args.space, ["measure.runtime=onnxruntime-int8", *args.overrides],
                       quick=not args.no_quick)
    study = args.study or f"{space.name}-int8-schemes"
    print(f"cpu {cpu_model()}: {features_label()}; torch {torch.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, python {platform.python_version()}")
    print(f"space {space.file}{'' if args.no_quick else ' --quick'}: {space.model.arch} "
          f"{space.model.image_size}x{space.model.image_size}, val {space.data.val_size} "
          f"images; measure {space.measure.threads} thread, batch {space.measure.batch_size}, "
          f"median of {space.measure.runs} runs")
    shutil.rmtree(space.study_dir(study), ignore_errors=True)  # choose anew
    t0 = time.perf_counter()
    ctx = prepare(space, progress=False, log=lambda m: print(m, file=sys.stderr, flush=True),
                  study_name=study)
    print(f"chosen in {time.perf_counter() - t0:.0f} s (base preparation included)")
    print()
    for line in format_scheme_table(ctx.int8_record):
        print(line)
    if args.emulate_avx2:
        print()
        emulate(space, ctx)


def emulate(space, ctx) -> None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("--emulate-avx2: qemu-x86_64 not found (Debian package qemu-user)")
        return
    shape = input_shape(space.model)
    runtime = get_runtime("onnxruntime-int8")
    rows = {r["scheme"]: r for r in ctx.int8_record["rows"]}
    with tempfile.TemporaryDirectory() as tmp:
        xs, ys = zip(*[(x.cpu(), y.cpu()) for x, y in ctx.splits.val], strict=True)
        np.save(f"{tmp}/x.npy", torch.cat(xs).float().numpy())
        np.save(f"{tmp}/y.npy", torch.cat(ys).numpy())
        for name in SCHEMES:
            torch.manual_seed(0)
            model = build(ctx.base.cpu(), all_8bit(ctx.blocks), ctx.blocks, ctx.head_name,
                          ctx.calib.cpu(), int8=name).model.eval()
            Path(f"{tmp}/{name}.onnx").write_bytes(runtime.artifact(model, shape,
                                                                    ctx.calib.cpu()))
        root = Path(__file__).resolve().parents[1]
        t0 = time.perf_counter()
        out = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", EMULATED, tmp,
                              json.dumps(list(SCHEMES)), str(root)],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"emulation failed: {out.stderr.strip().splitlines()[-1:]}")
            return
        emulated = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"the same files under qemu-x86_64 -cpu Haswell (AVX2, FMA; no AVX-512, no VNNI), "
          f"{time.perf_counter() - t0:.0f} s; accuracy on the {ctx.splits.val.size} "
          f"validation images (float base {ctx.int8_record['float_accuracy']:.4f})")
    print(f"  {'scheme':<9} {'here acc':>8} {'here exact':>10} {'AVX2 acc':>8} {'AVX2 exact':>10}")
    for name in SCHEMES:
        r, e = rows[name], emulated[name]
        print(f"  {name:<9} {r['accuracy']:>8.4f} {'yes' if r['exact'] else 'NO':>10} "
              f"{e['accuracy']:>8.4f} {'yes' if e['exact'] else 'NO':>10}")


if __name__ == "__main__":
    main()
