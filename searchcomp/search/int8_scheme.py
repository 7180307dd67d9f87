"""The int8 scheme of a study in the ``onnxruntime-int8`` runtime, chosen by measurement on
this CPU (:mod:`searchcomp.config.int8` says what the schemes are).

For each scheme the base is built as a trial with every block at 8 bits would be (weights
quantized, activations simulated with that scheme, calibrated on the calibration images),
written as its ``onnx-int8`` file, timed like a trial, and run on the validation split; its
kernel is probed at the ends of its range (:func:`~searchcomp.deploy.schemes.kernel_exact`).
:func:`~searchcomp.deploy.schemes.choose_scheme` keeps the fastest scheme whose file keeps
the float base's accuracy and agrees with its own simulation. The record (the table, the
choice, why) is stored with the study, keyed by the base, the measure settings, the CPU and
onnxruntime's version: another worker or a later run on the same machine reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchcomp.candidate import Recipe, build
from searchcomp.config import Space
from searchcomp.config.int8 import SCHEMES
from searchcomp.data import Batches
from searchcomp.deploy.cpu import cpu_features, cpu_model, features_label
from searchcomp.deploy.runtime import get_runtime
from searchcomp.deploy.schemes import choose_scheme, format_scheme_table, kernel_exact
from searchcomp.measure import time_latency
from searchcomp.models import Block, input_shape
from searchcomp.search.locks import measuring
from searchcomp.train import evaluate


def scheme_key(space: Space, digest: str) -> dict[str, Any]:
    """What a scheme choice depends on: the base's weights, the measure settings, this CPU's
    int8 features and onnxruntime's version."""
    import onnxruntime

    return {"weights": digest, "measure": space.measure.model_dump(mode="json"),
            "cpu": cpu_model(), "cpu_features": list(cpu_features() or ()),
            "onnxruntime": onnxruntime.__version__}


def file_accuracy(data: bytes, split: Batches, threads: int | None = None) -> float:
    """Top-1 accuracy of an ONNX file (run by onnxruntime, int8 kernels kept) on ``split``."""
    from searchcomp.deploy.onnx import session

    sess = session(data, threads or torch.get_num_threads(), int8=True)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in split:
        out = sess.run(None, {name: x.detach().cpu().float().contiguous().numpy()})[0]
        correct += int((torch.from_numpy(out).argmax(1) == y.cpu()).sum())
        total += len(y)
    return correct / max(total, 1)


def all_8bit(blocks: list[Block]) -> Recipe:
    """Every block at 8 bits, nothing else changed: the base as int8 runs it."""
    return Recipe({b.name: {"bits": 8} for b in blocks})


def measure_schemes(space: Space, base: nn.Module, blocks: list[Block], head_name: str,
                    calib: torch.Tensor, val: Batches, float_accuracy: float, folder: Path,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time and score every scheme on the all-8-bit base (see the module docstring) and
    choose one; returns the record (``scheme``, ``reason``, ``rows``, ...)."""
    mm = space.measure
    runtime = get_runtime("onnxruntime-int8")
    shape = input_shape(space.model)
    recipe = all_8bit(blocks)
    cpu_calib = calib.detach().cpu()
    device = next(base.parameters()).device
    base_cpu = base.to("cpu")
    log(f"int8: choosing the scheme on this CPU ({features_label()}): each of "
        f"{', '.join(SCHEMES)} on the base with every block at 8 bits")
    rows = []
    with measuring(folder):
        float_file = runtime.artifact(base_cpu, shape, cpu_calib)
        float_ms = time_latency(base_cpu, shape, batch_size=mm.batch_size, threads=mm.threads,
                                runs=mm.runs, warmup=mm.warmup, runtime=runtime.name,
                                artifact=float_file).median_ms
        for name in SCHEMES:
            torch.manual_seed(0)
            model = build(base_cpu, recipe, blocks, head_name, cpu_calib,
                          grad_batches=None, int8=name).model.eval()
            data = runtime.artifact(model, shape, cpu_calib)
            lat = time_latency(model, shape, batch_size=mm.batch_size, threads=mm.threads,
                               runs=mm.runs, warmup=mm.warmup, runtime=runtime.name,
                               artifact=data)
            rows.append({"scheme": name, "latency_ms": lat.median_ms,
                         "latency_p90_ms": lat.p90_ms, "accuracy": file_accuracy(data, val),
                         "sim_accuracy": evaluate(model, val.on("cpu")),
                         "exact": kernel_exact(name), "ran": lat.runtime.split(", ")[1]})
    base.to(device)
    record = choose_scheme(rows, float_accuracy, val.size, float_ms)
    record.update(float_latency_ms=float_ms, float_accuracy=float_accuracy,
                  val_images=val.size, cpu=features_label(), threads=mm.threads,
                  batch_size=mm.batch_size, chosen_by="measurement")
    for line in format_scheme_table(record):
        log(f"int8: {line}")
    return record


def fixed_scheme(name: str) -> dict[str, Any]:
    """The record of a scheme the space sets (``measure.int8_scheme``), with this CPU's
    kernel probe."""
    exact = kernel_exact(name)
    reason = f"{name}: set by measure.int8_scheme"
    if not exact:
        reason += (" (warning: this CPU's kernel is not exact at the range's ends for it; "
                   "the files may lose accuracy: try auto)")
    return {"scheme": name, "reason": reason, "rows": [], "faster_than_float": None,
            "cpu": features_label(), "chosen_by": "space", "exact": exact}


def stored_record(study_dir: Path) -> dict[str, Any] | None:
    """The latest scheme record made for a study on a CPU like this one (None: none yet)."""
    import json

    mine = {"cpu": cpu_model(), "cpu_features": list(cpu_features() or ())}
    found = []
    for p in Path(study_dir).glob("int8-scheme-*.json"):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        key = r.get("key") or {}
        if all(key.get(k) == v for k, v in mine.items()):
            found.append((p.stat().st_mtime, r))
    return max(found, key=lambda x: x[0])[1] if found else None


def int8_overview(space: Space) -> dict[str, Any]:
    """What ``inspect`` says of the int8 scheme: the setting, this CPU's kernel probe of
    every scheme, and the study's choice on a CPU like this one, if made."""
    return {"setting": space.measure.int8_scheme,
            "kernel_exact": {n: kernel_exact(n) for n in SCHEMES},
            "chosen": stored_record(space.study_dir())}
