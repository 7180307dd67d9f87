"""Per-output-channel weight quantization with a straight-through estimator (STE).

Quantization is a ``torch.nn.utils.parametrize`` parametrization of the weight, so the model
keeps training (fine-tuning) in float while every forward pass already sees the quantized
weights, and the float original receives the gradient unchanged (STE). ``materialize`` then
gives the model "as deployed": plain float weights holding exactly the quantized values.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from searchcomp.config import FLOAT_BITS
from searchcomp.config import SUPPORTED_BITS as _WIDTHS

#: integer weight widths (32 = float is not among them)
SUPPORTED_BITS = tuple(b for b in _WIDTHS if b != FLOAT_BITS)
_DEFAULT_TYPES = (nn.Conv2d, nn.Conv3d, nn.Linear)


def check_bits(bits: int) -> int:
    """Validate a weight width, so a typo in a search space fails with a readable reason."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(f"weight bit width must be an integer, got {bits!r}")
    if bits != FLOAT_BITS and bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported weight bit width {bits}; supported: "
                         f"{', '.join(map(str, SUPPORTED_BITS))} (or {FLOAT_BITS} = float)")
    return bits


def quantize_tensor(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel (dim 0) quantization of ``w``: (integers, float scales).

    ``scale = max|w_c| / qmax`` per channel (1 for an all-zero channel) and
    ``q = clamp(round(w / scale), -qmax, qmax)``, ``qmax = 2**(bits-1) - 1``; bits=2 thus gives
    {-1, 0, 1}. The integers are returned in float dtype; callers cast as they need.
    """
    qmax = 2 ** (bits - 1) - 1
    w = w.detach()
    flat = w.reshape(w.shape[0], -1) if w.dim() > 0 else w.reshape(1, 1)
    amax = flat.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1) if w.dim() > 0 else ()
    q = torch.clamp(torch.round(w / scale.reshape(view)), -qmax, qmax)
    return q, scale


class QuantizeWeight(nn.Module):
    """Fake-quantizes a weight to ``bits`` in the forward pass, passing gradients straight through.

    Register with ``parametrize.register_parametrization(module, "weight", QuantizeWeight(b))``.
    The forward value is exactly ``q * scale`` (so serialized integers reproduce it bit for
    bit), and the gradient w.r.t. the float original equals the gradient w.r.t. the quantized
    weight.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        if check_bits(bits) == FLOAT_BITS:
            raise ValueError("bits=32 means float: leave the weight unparametrized")
        self.bits = bits

    def dequantized(self, w: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_tensor(w, self.bits)
        view = (-1,) + (1,) * (w.dim() - 1) if w.dim() > 0 else ()
        return q * scale.reshape(view)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # Same STE as ``w + (deq - w).detach()``, but the value is deq exactly
        # (w - w.detach() is exactly zero), so the round trip through integers is exact.
        return self.dequantized(w) + (w - w.detach())

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _quantizer(module: nn.Module, name: str) -> QuantizeWeight | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, QuantizeWeight):
            return p
    return None


def _targets(module: nn.Module) -> list[tuple[str, nn.Module, str]]:
    out = []
    for mname, m in module.named_modules():
        if isinstance(m, (QuantizeWeight, parametrize.ParametrizationList)):
            continue
        names: list[str] = []
        if isinstance(m, _DEFAULT_TYPES):
            names.append("weight")
        for n in getattr(m, "quant_weights", ()) or ():
            if n not in names:
                names.append(n)
        for n in names:
            if parametrize.is_parametrized(m, n) or isinstance(getattr(m, n, None), torch.Tensor):
                out.append((mname, m, n))
            else:
                raise ValueError(f"{type(m).__name__} {mname!r} declares quant_weights "
                                 f"{n!r}, but it has no such tensor")
    return out


def quantize_module(module: nn.Module, bits: int) -> int:
    """Quantize every weight of ``module`` (recursively, itself included) to ``bits``.

    Covered: the ``weight`` of each Conv2d, Conv3d and Linear, plus the tensors any module lists
    in a ``quant_weights`` attribute (how custom layers opt in). Calling it again with the same
    width is a no-op; a different width raises, since re-quantizing an already quantized weight
    would compound the rounding. ``bits=32`` (float) quantizes nothing.

    Returns how many tensors under ``module`` are quantized at ``bits`` after the call.
    """
    check_bits(bits)
    targets = _targets(module)
    for mname, m, n in targets:
        q = _quantizer(m, n)
        if q is not None and q.bits != bits:
            raise ValueError(f"{mname or type(m).__name__}.{n} is already quantized to {q.bits} "
                             f"bits; cannot re-quantize it to {bits}")
    if bits == FLOAT_BITS:
        return 0
    count = 0
    for _, m, n in targets:
        if _quantizer(m, n) is None:
            parametrize.register_parametrization(m, n, QuantizeWeight(bits))
        count += 1
    return count


def weight_bits(module: nn.Module, name: str = "weight") -> int:
    """Bit width a tensor is deployed at: its quantization width, or 32 when it is float."""
    q = _quantizer(module, name)
    return FLOAT_BITS if q is None else q.bits


def quantized_tensors(model: nn.Module) -> list[tuple[str, str, int]]:
    """``(module name, tensor name, bits)`` of every quantized tensor in ``model``."""
    out = []
    for mname, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for n in m.parametrizations:
                q = _quantizer(m, n)
                if q is not None:
                    out.append((mname, n, q.bits))
    return out


def integer_weights(module: nn.Module, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """The integers and per-output-channel float32 scales a quantized tensor really uses.

    These are what gets stored on disk and what the size metric counts; ``q * scale``
    (broadcast over dim 0) equals the fake-quantized weight exactly. The integers are int8 for
    widths up to 8 bits and int16 for 16 bits.
    """
    qz = _quantizer(module, name)
    if qz is None:
        raise ValueError(f"{type(module).__name__}.{name} is not quantized")
    chain = module.parametrizations[name]
    if chain[-1] is not qz:
        raise ValueError(f"{type(module).__name__}.{name}: quantization must be the last "
                         "parametrization for its integers to define the weight")
    with torch.no_grad():
        w = chain.original
        for p in chain:
            if p is qz:
                break
            w = p(w)
        q, scale = quantize_tensor(w, qz.bits)
    dtype = torch.int8 if qz.bits <= 8 else torch.int16
    return q.to(dtype), scale


def materialize(model: nn.Module) -> nn.Module:
    """A deep copy with all parametrizations folded into plain weights (quantized values kept).

    This is the model as deployed: no fake-quant ops on the forward path, so latency and FLOPs
    are measured on what would actually run. ``model`` itself is left untouched.
    """
    out = copy.deepcopy(model)
    for m in list(out.modules()):
        if parametrize.is_parametrized(m):
            # A deep copy shares the generated ``Parametrized<Cls>`` class (which holds the
            # ``weight`` property) with the original; removing the parametrization deletes that
            # property from the class and would break the original. Give the copy its own class.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for n in list(m.parametrizations):
                parametrize.remove_parametrizations(m, n, leave_parametrized=True)
    return out
