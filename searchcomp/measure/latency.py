"""Latency measured, not assumed: median of many timed runs of the artifact a runtime
ships (:mod:`searchcomp.deploy.runtime`), at a fixed thread count, recorded with the runtime
and the CPU features that decide int8 speed."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from searchcomp.deploy.cpu import cpu_features
from searchcomp.deploy.runtime import RUNTIMES as _RUNTIMES
from searchcomp.deploy.runtime import get_runtime, runtime_of_format

MIN_RUNS = 30
#: p90 / median above this says the runs were disturbed (other work on the same cores). On
#: this project's 2-core machine, a tiny ResNet-18 study: 1.04-1.07 for the quiet
#: re-measurements of the front, 1.05-2.6 (most above 1.7) for trials timed while a test
#: suite ran on the same cores
LOAD_RATIO = 1.25
#: the names ``measure.runtime`` takes
RUNTIMES = tuple(_RUNTIMES)


@dataclass
class Latency:
    """A latency measurement and exactly what it was measured on, so numbers stay comparable."""

    median_ms: float  # median over ``runs`` timed forward passes
    #: e.g. "onnxruntime 1.22.0 CPUExecutionProvider, float, 1 thread; cpu avx2 avx512_vnni"
    runtime: str
    runs: int
    batch_size: int
    threads: int
    p90_ms: float
    #: the int8-relevant CPU features of the machine (None where they cannot be read)
    cpu_features: tuple[str, ...] | None = field(default_factory=cpu_features)
    #: the 10th percentile of the same runs (None: not recorded)
    p10_ms: float | None = None

    @property
    def under_load(self) -> bool:
        """True when the runs' dispersion says they were timed under load
        (p90 / median > :data:`LOAD_RATIO`)."""
        return timed_under_load(self.median_ms, self.p90_ms)


def timed_under_load(median_ms: float | None, p90_ms: float | None) -> bool:
    """The load flag of a latency from its median and p90 (False when either is missing)."""
    if not median_ms or p90_ms is None:
        return False
    return float(p90_ms) / float(median_ms) > LOAD_RATIO


def percentile(times: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``times``, nearest rank (a time some run really took)."""
    s = sorted(times)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def time_runs(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _float_dtype(m: nn.Module) -> torch.dtype:
    for p in m.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _check(batch_size: int, warmup: int, threads: int, runtime: str) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    get_runtime(runtime)  # unknown: ValueError naming the known ones


def _example(batch_size: int, input_shape: tuple[int, ...]) -> Tensor:
    return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))


def time_latency(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1,
                 threads: int | None = None, runs: int = MIN_RUNS, warmup: int = 5,
                 runtime: str = "torch", calib: Tensor | None = None,
                 artifact: bytes | None = None, deployed: nn.Module | None = None,
                 device: torch.device | str = "cpu") -> Latency:
    """Median wall-clock latency of ``model`` as ``runtime`` ships it, on ``device`` (the
    deployment target, default the CPU at ``threads`` threads; wherever the model was
    trained).

    The artifact ``export`` would write for the runtime (``artifact``, if already made, else
    made here; ``calib``: training images, for ``onnxruntime-int8``) is loaded and run:
    ``torch`` the compact state_dict in the eager architecture, ``torchscript`` the traced
    module, ``onnxruntime`` the ONNX file with float kernels, ``onnxruntime-int8`` the int8
    ONNX file. ``input_shape`` excludes the batch dimension. Fewer than 30 runs make the
    median too noisy to compare candidates, so ``runs`` is raised to at least 30.
    ``threads`` defaults to ``torch.get_num_threads()``; torch's count is restored after.
    ``deployed``: ``materialize(model)``, if at hand (the torch runtime loads its state_dict
    into a copy of that architecture). Only the torch runtime runs on a device other than
    the CPU; on a CUDA device each run is timed with CUDA events after synchronising.
    """
    runs = max(int(runs), MIN_RUNS)
    device = torch.device(device)
    threads = int(threads) if threads is not None else torch.get_num_threads()
    _check(batch_size, warmup, threads, runtime)
    rt = get_runtime(runtime)
    if device.type != "cpu" and runtime != "torch":
        raise ValueError(f"runtime {runtime} is timed on the CPU here; device {device} needs "
                         "runtime torch")
    if artifact is None:
        artifact = rt.artifact(model, input_shape, calib)
    run = rt.runner(artifact, _example(batch_size, input_shape), threads,
                    deployed if deployed is not None else model, device=device)
    with rt.running(threads):
        if device.type == "cuda":
            times = _cuda_times(run, device, runs, warmup)
        elif device.type == "cpu":
            times = time_runs(run, runs, warmup)
        else:  # kernels are queued: wait for each run to finish
            times = _synced_times(run, device, runs, warmup)
    return Latency(statistics.median(times),
                   rt.label(threads, _float_dtype(model), device=_device_label(device),
                            artifact=artifact), runs,
                   batch_size, threads, percentile(times, 0.9), p10_ms=percentile(times, 0.1))


def _cuda_times(fn: Callable[[], object], device: torch.device, runs: int,
                warmup: int) -> list[float]:
    """Milliseconds of each run between two CUDA events, the queue drained before each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _synced_times(fn: Callable[[], object], device: torch.device, runs: int,
                  warmup: int) -> list[float]:
    from searchcomp.compute import synchronize

    def run() -> None:
        fn()
        synchronize(device)

    synchronize(device)
    return time_runs(run, runs, warmup)


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def time_artifact(folder: str | os.PathLike[str], *, batch_size: int = 1, threads: int = 1,
                  runs: int = MIN_RUNS, warmup: int = 5,
                  loaded: nn.Module | None = None) -> Latency:
    """Latency of an export folder's model file, run by the runtime of its format.
    ``loaded``: the folder's ``load`` result, if already at hand (a ``state_dict`` file is
    loaded into that architecture)."""
    from searchcomp.deploy.formats import read_info

    folder = Path(folder)
    info = read_info(folder)
    rt = runtime_of_format(info["format"])
    runs = max(int(runs), MIN_RUNS)
    _check(batch_size, warmup, threads, rt.name)
    model = loaded
    if model is None and rt.format == "state_dict":
        from searchcomp.deploy.load import load

        model = load(folder)
    data = (folder / info["file"]).read_bytes()
    run = rt.runner(data, _example(batch_size, tuple(info["input_shape"])), threads, model)
    with rt.running(threads):
        times = time_runs(run, runs, warmup)
    dtype = _float_dtype(model) if model is not None else torch.float32
    return Latency(statistics.median(times), rt.label(threads, dtype, artifact=data), runs,
                   batch_size, threads, percentile(times, 0.9), p10_ms=percentile(times, 0.1))
