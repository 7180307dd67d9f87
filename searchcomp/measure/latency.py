"""Latency measured, not assumed: median of many timed runs of the model as deployed, at a
fixed thread count, in a named runtime."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from searchcomp.deploy.runtime import threads_label, torch_label, torch_threads

MIN_RUNS = 30
Runtime = Literal["torch", "onnxruntime"]
RUNTIMES = ("torch", "onnxruntime")


@dataclass
class Latency:
    """A latency measurement and exactly what it was measured on, so numbers stay comparable."""

    median_ms: float  # median over ``runs`` timed forward passes
    runtime: str  # e.g. "torch 2.14.1 eager, cpu, float32, 2 threads"
    runs: int
    batch_size: int
    threads: int
    p90_ms: float


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


def _p90(times: list[float]) -> float:
    s = sorted(times)
    return s[min(len(s) - 1, max(0, round(0.9 * (len(s) - 1))))]


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
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")


def time_latency(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1,
                 threads: int | None = None, runs: int = MIN_RUNS, warmup: int = 5,
                 runtime: Runtime = "torch", deployed: nn.Module | None = None,
                 device: torch.device | str = "cpu") -> Latency:
    """Median wall-clock latency of ``model`` as deployed, on ``device`` (the deployment
    target, default the CPU at ``threads`` threads; wherever the model was trained).

    ``"torch"``: the materialized model (fake quantization folded into float weights; pruned
    channels are already gone) in eval mode under ``inference_mode``. ``"onnxruntime"``: the
    ONNX artifact ``export --format onnx`` writes (integer weights), run by onnxruntime's
    CPUExecutionProvider. ``input_shape`` excludes the batch dimension. Fewer than 30 runs
    make the median too noisy to compare candidates, so ``runs`` is raised to at least 30.
    ``threads`` defaults to ``torch.get_num_threads()``; torch's count is restored after.
    ``deployed``: ``materialize(model)``, if the caller already has it (it is moved to
    ``device``). On a CUDA device each run is timed with CUDA events after synchronising.
    """
    runs = max(int(runs), MIN_RUNS)
    device = torch.device(device)
    threads = int(threads) if threads is not None else torch.get_num_threads()
    _check(batch_size, warmup, threads, runtime)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, *input_shape, generator=gen)
    if runtime == "onnxruntime":
        times, name = _onnxruntime_times(model, x, threads, runs, warmup)
    else:
        if deployed is None:
            from searchcomp.choices.quant import materialize

            deployed = materialize(model)
        m = deployed.to(device).eval()
        dtype = _float_dtype(m)
        x = x.to(device, dtype)
        with torch_threads(threads), torch.inference_mode():
            if device.type == "cuda":
                times = _cuda_times(lambda: m(x), device, runs, warmup)
            elif device.type == "cpu":
                times = time_runs(lambda: m(x), runs, warmup)
            else:  # kernels are queued: wait for each run to finish
                times = _synced_times(lambda: m(x), device, runs, warmup)
        name = torch_label("eager", threads, dtype, device=_device_label(device))
    return Latency(statistics.median(times), name, runs, batch_size, threads, _p90(times))


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


def _onnxruntime_times(model: nn.Module, x: torch.Tensor, threads: int, runs: int,
                       warmup: int) -> tuple[list[float], str]:
    from searchcomp.deploy.integer import integer_model
    from searchcomp.deploy.onnx import export_onnx, runtime_name, session

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(integer_model(model), x[:1].float(), path)
        sess = session(path, threads)
    feed = {sess.get_inputs()[0].name: x.float().numpy()}
    times = time_runs(lambda: sess.run(None, feed), runs, warmup)
    return times, f"{runtime_name()}, {threads_label(threads)}"


def time_artifact(folder: str | os.PathLike[str], *, batch_size: int = 1, threads: int = 1,
                  runs: int = MIN_RUNS, warmup: int = 5,
                  loaded: nn.Module | None = None) -> Latency:
    """Latency of an export folder in its own runtime (torch eager, TorchScript or
    onnxruntime). ``loaded``: the torch formats' ``load`` result, if already at hand (ONNX
    gets a session with ``threads`` threads)."""
    from searchcomp.deploy.formats import read_info

    folder = Path(folder)
    info = read_info(folder)
    runs = max(int(runs), MIN_RUNS)
    _check(batch_size, warmup, threads, "torch")
    x = torch.randn(batch_size, *info["input_shape"], generator=torch.Generator().manual_seed(0))
    if info["format"] == "onnx":
        from searchcomp.deploy.onnx import runtime_name, session

        sess = session(folder / info["file"], threads)
        feed = {sess.get_inputs()[0].name: x.numpy()}
        times = time_runs(lambda: sess.run(None, feed), runs, warmup)
        name = f"{runtime_name()}, {threads_label(threads)}"
    else:
        from searchcomp.deploy.load import load

        m = loaded if loaded is not None else load(folder)
        kind = "TorchScript" if info["format"] == "torchscript" else "eager"
        # TorchScript's profiling executor settles in the first runs
        warm = max(warmup, 3 if kind == "TorchScript" else 0)
        with torch_threads(threads), torch.no_grad():
            times = time_runs(lambda: m(x), runs, warm)
        name = torch_label(kind, threads)
    return Latency(statistics.median(times), name, runs, batch_size, threads, _p90(times))
