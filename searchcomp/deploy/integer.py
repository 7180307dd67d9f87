"""The model as shipped: quantized weights held as integers, in torch and ONNX files.

:func:`integer_model` turns a candidate (fake-quantized weights, see :mod:`searchcomp.choices.quant`)
into a module whose quantized weights are buffers of integer codes plus float32 per-channel
scales, dequantized inside ``forward``: int8 at 8 bits, int16 at 16 bits, and for 6, 4 and 2
bits the bit-packed uint8 bytes of :mod:`searchcomp.deploy.packed`, unpacked with exact float
arithmetic (every intermediate is an integer below 2**24). Tracing it therefore writes the
integers, not float copies, into TorchScript and ONNX files; in ONNX the 8-bit weights become
the standard QDQ form (an int8 initializer and a per-channel ``DequantizeLinear``).

The dequantized weight equals the fake-quantized one bit for bit (``q * scale`` in float32
either way), so the files compute what the fine-tuned candidate computed. Neither runtime
unpacks at every call: the TorchScript weights dequantize once, at the first call, and
onnxruntime folds the constant dequantization when the session starts.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from searchcomp.choices.quant import integer_weights, materialize, quantized_tensors
from searchcomp.deploy.packed import encode_codes


class _DequantizeLinear(torch.autograd.Function):
    """int8 codes * per-channel scale; exported to ONNX as ``DequantizeLinear`` (axis 0)."""

    @staticmethod
    def forward(ctx, codes: Tensor, scale: Tensor, view: tuple[int, ...],
                channels: int) -> Tensor:
        return codes.float() * scale.reshape(view)

    @staticmethod
    def symbolic(g, codes, scale, view, channels):
        zero = g.op("Constant", value_t=torch.zeros(channels, dtype=torch.int8))
        return g.op("DequantizeLinear", codes, scale, zero, axis_i=0)


class QWeight(nn.Module):
    """One quantized tensor as integer codes (``codes``) and float32 scales (``scale``);
    calling it returns the float weight ``q * scale`` (scale broadcast over dim 0)."""

    def __init__(self, q: Tensor, scale: Tensor, bits: int) -> None:
        super().__init__()
        self.bits = int(bits)
        self.shape = tuple(int(s) for s in q.shape)
        self.numel = int(q.numel())
        self.view = (-1,) + (1,) * (q.dim() - 1) if q.dim() else ()
        self.channels = int(q.shape[0]) if q.dim() else 1
        self.group = 8 // math.gcd(8, self.bits)  # packed values per ``nbytes`` bytes
        self.nbytes = self.group * self.bits // 8
        self.register_buffer("codes", encode_codes(q.detach().cpu(), self.bits))
        self.register_buffer("scale", scale.detach().float().cpu().reshape(-1))

    def integers(self) -> Tensor:
        """The codes as float integers in the weight's shape (unpacked when bit-packed)."""
        b, group, nbytes = self.bits, self.group, self.nbytes
        if b == 8 or b == 16:
            return self.codes.float().reshape(self.shape)
        f = self.codes.float().reshape(-1, nbytes)
        word = f[:, 0]
        for i in range(1, nbytes):
            word = word + f[:, i] * float(256 ** i)
        # a_j = word >> (b * j); value j = a_j - 2**b * a_{j+1}; a_group is 0
        shifted = [word] + [torch.floor(word / float(2 ** (b * j))) for j in range(1, group)]
        vals = [shifted[j] - float(2 ** b) * shifted[j + 1] for j in range(group - 1)]
        vals.append(shifted[-1])
        u = torch.stack(vals, 1).reshape(-1)[:self.numel]
        q = torch.where(u >= float(2 ** (b - 1)), u - float(2 ** b), u)
        return q.reshape(self.shape)

    def dequantized(self) -> Tensor:
        """The float weight ``q * scale``."""
        return self.integers() * self.scale.reshape(self.view)

    def forward(self) -> Tensor:
        if self.bits == 8 and torch.onnx.is_in_onnx_export():
            return _DequantizeLinear.apply(self.codes, self.scale, self.view,
                                           self.channels)
        return self.dequantized()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, shape={self.shape}, stored={self.codes.dtype}"


class CachedQWeight(QWeight):
    """A :class:`QWeight` that dequantizes once, on its first call, and keeps the float
    weight in memory (not in the saved file: :func:`save_torchscript` clears ``cache``).
    Compiled with ``torch.jit.script`` so the traced model keeps this logic."""

    # a real annotation object, not a string (this module uses postponed annotations)
    __annotations__ = {"cache": Optional[Tensor]}  # noqa: UP045 (TorchScript: typing.Optional)

    def __init__(self, q: Tensor, scale: Tensor, bits: int) -> None:
        super().__init__(q, scale, bits)
        self.cache = None

    def forward(self) -> Tensor:
        c = self.cache
        if c is None or c.device != self.codes.device:
            c = self.dequantized()
            self.cache = c
        return c


def _scripted(m: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return torch.jit.script(m)


def _attach(module: nn.Module, names: list[str], qweights: list[QWeight]) -> None:
    """Replace the float tensors ``names`` of ``module`` by integer ones computed on access.

    Like ``torch.nn.utils.parametrize``, ``module`` gets its own subclass with a property
    per name, so the layer's unchanged ``forward`` reads the dequantized weight.
    """
    props = {}
    for n, qw in zip(names, qweights, strict=True):
        delattr(module, n)
        module.add_module(f"{n}_quant", qw)
        props[n] = property(lambda self, key=f"{n}_quant": self._modules[key]())
    cls = type(module)
    module.__class__ = type(f"Int{cls.__name__}", (cls,), props)


def integer_model(model: nn.Module, cache: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` with every quantized weight held as integers.

    Float tensors stay float32; pruned channels are already gone. ``model`` is untouched.
    With ``cache`` the weights are scripted :class:`CachedQWeight` objects (for TorchScript:
    dequantized once at the first call instead of at every call).
    """
    out = materialize(model).float().cpu().eval()
    by_module: dict[str, list[tuple[str, int]]] = {}
    for mname, n, bits in quantized_tensors(model):
        by_module.setdefault(mname, []).append((n, bits))
    for mname, tensors in by_module.items():
        src = model.get_submodule(mname)
        qws = []
        for n, bits in tensors:
            q, scale = integer_weights(src, n)
            qws.append(_scripted(CachedQWeight(q, scale, bits)) if cache
                       else QWeight(q, scale, bits))
        _attach(out.get_submodule(mname), [n for n, _ in tensors], qws)
    for p in out.parameters():
        p.requires_grad_(False)
    return out


