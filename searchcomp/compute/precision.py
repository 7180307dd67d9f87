"""Mixed precision: what ``auto`` picks on this hardware, autocast, the gradient scaler and the
memory layout training uses."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from searchcomp.compute.device import cpu_flags, device_name

#: autocast dtype of each precision (fp32 = no autocast)
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                         "fp16": torch.float16}
#: CPU flags of native bf16 arithmetic (x86 AVX512-BF16 / AMX-BF16, Arm's BF16 extension)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (without it, bf16 is emulated and slower
    than fp32)."""
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # a private torch helper: absent or failing on some builds
            pass
    return bool(set(BF16_FLAGS) & cpu_flags())


def cuda_has_bf16(device: torch.device) -> bool:
    """True when the GPU has native bf16 (Ampere and later)."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no emulation argument
        return torch.cuda.get_device_capability(device)[0] >= 8


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(precision ``auto`` means on ``device``, why)."""
    if device.type == "cuda":
        if cuda_has_bf16(device):
            return "bf16", "the GPU has native bf16"
        return "fp32", "the GPU has no native bf16 (set precision: fp16 for mixed precision)"
    if device.type == "cpu":
        if cpu_has_bf16():
            return "bf16", "the CPU has native bf16 (AVX512-BF16/AMX)"
        return "fp32", "the CPU has no native bf16 (no AVX512-BF16/AMX): bf16 would be slower"
    return "fp32", f"mixed precision is not chosen automatically on {device.type}"


@dataclass(frozen=True)
class Compute:
    """Where and how tensors are computed: one device for everything a trial does, the
    training precision (autocast), the evaluation precision and the training memory layout.

    The default is what searchcomp did before devices existed: CPU, fp32, NCHW.
    """

    device: torch.device = torch.device("cpu")
    #: base training and fine-tunes: fp32 | bf16 | fp16
    precision: str = "fp32"
    #: validation accuracy the search scores (fp32 keeps runs comparable)
    eval_precision: str = "fp32"
    #: NHWC weights and inputs while training
    channels_last: bool = False
    #: why each ``auto`` setting resolved as it did
    notes: tuple[str, ...] = field(default=(), compare=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The training autocast (nothing for fp32)."""
        return _autocast(self.device, self.precision)

    def eval_autocast(self) -> contextlib.AbstractContextManager:
        """The evaluation autocast (nothing for fp32)."""
        return _autocast(self.device, self.eval_precision)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def train_layout(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, in the training memory layout (in place; returned)."""
        model.to(self.device)
        if self.channels_last:
            _set_layout(model, torch.channels_last)
        return model

    def plain_layout(self, model: nn.Module) -> nn.Module:
        """``model`` back in the default (NCHW) layout after training, so what is measured,
        saved and exported does not depend on how it was trained (in place; returned)."""
        if self.channels_last:
            _set_layout(model, torch.contiguous_format)
        return model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A training batch in the training memory layout."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def describe(self) -> str:
        """``cpu (AMD EPYC, 2 cores), bf16 autocast, channels_last; evaluation in fp32``."""
        train = "fp32" if self.precision == "fp32" else f"{self.precision} autocast"
        if self.precision == "fp16":
            train += " + gradient scaler"
        layout = ", channels_last" if self.channels_last else ""
        return f"{device_name(self.device)}, {train}{layout}; evaluation in {self.eval_precision}"


def _set_layout(model: nn.Module, layout: torch.memory_format) -> None:
    """Every 4-D parameter and buffer in ``layout``; other ranks (e.g. a compact 5-D kernel,
    which ``Module.to(memory_format=...)`` refuses) stay as they are."""
    with torch.no_grad():
        for m in model.modules():
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                if t is not None and t.dim() == 4 and not t.is_contiguous(memory_format=layout):
                    t.data = t.data.contiguous(memory_format=layout)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

