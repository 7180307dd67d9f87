"""Which device a spelling (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) means here.

One :class:`torch.device` is resolved once and handed down; nothing below calls ``.cuda()``.
"""

from __future__ import annotations

import torch

from searchcomp.config import check_device
from searchcomp.errors import SearchcompError


class DeviceError(SearchcompError):
    """The configured device does not exist on this machine."""


def mps_available() -> bool:
    """True when torch can run on Apple's Metal (MPS) backend."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _no_cuda_reason() -> str:
    if not torch.backends.cuda.is_built() or torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build"
    return f"this torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device"


def resolve_device(spec: str) -> torch.device:
    """The device ``spec`` names: ``auto`` = CUDA if available, else MPS, else CPU.

    Raises :class:`DeviceError` (one line) for a device this machine does not have, e.g.
    ``cuda`` without a GPU or ``cuda:2`` with two GPUs.
    """
    try:
        spec = check_device(spec)
    except ValueError:
        raise DeviceError(f"{spec!r} is not a device; use auto, cpu, cuda, cuda:N or "
                          "mps") from None
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{spec}: CUDA is not available ({_no_cuda_reason()}); "
                              "use cpu or auto")
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"{spec}: this machine has {count} CUDA device(s), "
                              f"cuda:0..cuda:{count - 1}")
        return torch.device("cuda", index)
    if spec == "mps" and not mps_available():
        raise DeviceError("mps: Apple's Metal backend is not available here (it needs Apple "
                          "silicon, macOS 12.3+ and a torch built with MPS); use cpu or auto")
    return torch.device(spec)


def device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA A100-SXM4-40GB)``, ``mps``, ``cpu (AMD EPYC, 2 cores)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        import os

        return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"
    return str(device)


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU feature flags (/proc/cpuinfo ``flags`` or ``Features``), empty if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def synchronize(device: torch.device) -> None:
    """Wait for every kernel queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
