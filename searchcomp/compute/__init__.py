"""Where training runs and in what arithmetic: the one :class:`Compute` object that base
training, fine-tunes, calibration and local fits, pruning importance and evaluation share.

The space file spells it (``device``, ``precision``, ``eval_precision``, ``channels_last``);
:func:`resolve_compute` turns that into real torch objects once, checking the hardware.
"""

from __future__ import annotations

from searchcomp.compute.device import (
    DeviceError,
    cpu_flags,
    cpu_model,
    device_name,
    mps_available,
    resolve_device,
    synchronize,
)
from searchcomp.compute.precision import DTYPES, Compute, auto_precision, cpu_has_bf16
from searchcomp.config import Space
from searchcomp.errors import SearchcompError

__all__ = ["DTYPES", "Compute", "DeviceError", "auto_precision", "compute_for", "cpu_flags",
           "cpu_has_bf16", "cpu_model", "device_name", "mps_available", "resolve_compute",
           "resolve_device", "synchronize"]


def resolve_compute(device: str = "auto", precision: str = "auto",
                    eval_precision: str = "fp32", channels_last: str | bool = "auto") -> Compute:
    """Resolve the spelled settings on this machine.

    ``precision: auto`` is bf16 on GPUs and CPUs with native bf16, else fp32;
    ``eval_precision: train`` follows the training precision; ``channels_last: auto`` is on
    with bf16/fp16 on a CPU or a CUDA GPU (where NHWC kernels are the fast ones).
    """
    dev = resolve_device(device)
    notes = []
    if precision == "auto":
        precision, why = auto_precision(dev)
        notes.append(f"precision auto -> {precision}: {why}")
    if precision not in DTYPES:
        raise SearchcompError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if eval_precision == "train":
        eval_precision = precision
    if channels_last == "auto":
        channels_last = precision != "fp32" and dev.type in ("cpu", "cuda")
    return Compute(dev, precision, eval_precision, bool(channels_last), tuple(notes))


def compute_for(space: Space, device: str | None = None) -> Compute:
    """The :class:`Compute` of ``space``; ``device`` (e.g. from ``--device``) overrides the
    space's ``device``. A device this machine lacks is a one-line error naming where it was
    asked for (the space file's line, or ``--device``)."""
    try:
        return resolve_compute(device or space.device, space.precision, space.eval_precision,
                               space.channels_last)
    except DeviceError as e:
        if device:
            raise SearchcompError(f"--device {e}") from None
        raise space.error("device", str(e)) from None
