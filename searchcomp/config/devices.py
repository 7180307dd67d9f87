"""How the space file spells devices and precisions (checked here without torch; whether the
machine has them is checked by :mod:`searchcomp.compute`)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

#: where training runs (``auto``: CUDA, else MPS, else CPU)
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: arithmetic of base training and fine-tunes (``auto``: bf16 where the hardware has it)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(value: str, allow_auto: bool = True) -> str:
    """``value`` (normalised) if it spells a device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``
    or ``mps``; else a ValueError listing them."""
    v = str(value).strip().lower()
    if not _DEVICE.match(v) or (v == "auto" and not allow_auto):
        raise ValueError(f"unknown device {value!r}; use one of "
                         f"{', '.join(d for d in DEVICES if allow_auto or d != 'auto')}")
    return v


def _check_target(value: str) -> str:
    return check_device(value, allow_auto=False)


#: a device field of the space file (``auto`` allowed)
Device = Annotated[str, AfterValidator(check_device)]
#: a device that must be named (a deployment target): no ``auto``
TargetDevice = Annotated[str, AfterValidator(_check_target)]
