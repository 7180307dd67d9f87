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


def quantize_tensor(w: torch.Tensor, bits: int, clip: torch.Tensor | None = None,
                    levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel (dim 0) quantization of ``w``: (integers, float scales).

    ``scale = clip * max|w_c| / qmax`` per channel (1 for an all-zero channel) and
    ``q = clamp(round(w / scale), -qmax, qmax)``, ``qmax = 2**(bits-1) - 1``; bits=2 thus gives
    {-1, 0, 1}. ``clip`` (per channel, in (0, 1]; default 1 = max-abs) clips the range to trade
    the error of the few largest weights for a finer grid (see :func:`mse_clip`). Since
    ``clip <= 1`` the largest weight of a channel always takes the code ``+-qmax``: the scale
    can be read back from the quantized weights alone (``max|w_q| / qmax``), which is how the
    int8 exporter keeps these exact codes. The integers are returned in float dtype.
    ``levels``: a smaller largest code than ``qmax`` (an int8 kernel's reduced range, see
    :class:`searchcomp.deploy.schemes.Int8Scheme`).
    """
    qmax = 2 ** (bits - 1) - 1 if levels is None else int(levels)
    w = w.detach()
    flat = w.reshape(w.shape[0], -1) if w.dim() > 0 else w.reshape(1, 1)
    amax = flat.abs().amax(dim=1)
    if clip is not None:
        amax = amax * clip.to(amax)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1) if w.dim() > 0 else ()
    q = torch.clamp(torch.round(w / scale.reshape(view)), -qmax, qmax)
    return q, scale


#: ratios of the coarse clipping grid, then how many halvings refine each channel's best
CLIP_GRID, CLIP_REFINE = 20, 5
#: widths from which max-abs is kept: clipping 8-bit weights lowers their error by ~3 %
CLIP_MAX_BITS = 8
#: weights per channel the clipping error is estimated on (large channels are subsampled)
CLIP_SAMPLE = 1024
#: values evaluated at once when several ratios are tried together (memory bound)
_CLIP_CHUNK = 1 << 22


@torch.no_grad()
def mse_clip(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per output channel, the clipping ratio in (0, 1] whose quantization of ``w`` has the
    least squared error: a grid of :data:`CLIP_GRID` ratios, then :data:`CLIP_REFINE` local
    refinements. At :data:`CLIP_MAX_BITS` bits and more, max-abs (ratio 1).

    At 2 bits max-abs scaling zeroes every weight below half the channel's maximum; the
    MSE-optimal ternary scale keeps far more of them (most of a channel's weights are small).
    """
    channels = w.shape[0] if w.dim() > 0 else 1
    if bits >= CLIP_MAX_BITS:
        return torch.ones(channels)
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().float().reshape(channels, -1).cpu()
    amax = flat.abs().amax(dim=1).clamp_min(1e-30)
    # the error of a ratio is estimated on an evenly strided sample of each channel
    flat = flat[:, ::max(1, -(-flat.shape[1] // CLIP_SAMPLE))]

    def errors(ratios: torch.Tensor) -> torch.Tensor:  # ratios [R, C] -> squared errors [R, C]
        out = []
        step = max(1, _CLIP_CHUNK // max(1, flat.numel()))
        for i in range(0, ratios.shape[0], step):
            scale = (ratios[i:i + step] * amax / qmax)[:, :, None]
            q = torch.clamp(torch.round(flat / scale), -qmax, qmax)
            out.append((q * scale - flat).square().sum(2))
        return torch.cat(out)

    grid = (torch.arange(1, CLIP_GRID + 1, dtype=flat.dtype) / CLIP_GRID)[:, None]
    grid = grid.expand(-1, channels)
    err = errors(grid)
    best_err, idx = err.min(0)
    best = grid.gather(0, idx[None])[0]
    step = 1.0 / CLIP_GRID
    for _ in range(CLIP_REFINE):
        step /= 2
        tries = torch.stack([(best - step).clamp(1e-3, 1.0), (best + step).clamp(1e-3, 1.0)])
        err = errors(tries)
        e, i = err.min(0)
        better = e < best_err
        best = torch.where(better, tries.gather(0, i[None])[0], best)
        best_err = torch.where(better, e, best_err)
    return best


class QuantizeWeight(nn.Module):
    """Fake-quantizes a weight to ``bits`` in the forward pass, passing gradients straight through.

    Register with ``parametrize.register_parametrization(module, "weight", QuantizeWeight(b))``.
    The forward value is exactly ``q * scale`` (so serialized integers reproduce it bit for
    bit), and the gradient w.r.t. the float original equals the gradient w.r.t. the quantized
    weight. ``clip`` (buffer, one ratio per output channel) is chosen once, when the weight is
    quantized (:func:`mse_clip`); the scale then follows the channel's maximum as the weight
    fine-tunes, so the largest weight keeps the code ``+-qmax``.
    """

    def __init__(self, bits: int, clip: torch.Tensor | None = None, channels: int = 1) -> None:
        super().__init__()
        if check_bits(bits) == FLOAT_BITS:
            raise ValueError("bits=32 means float: leave the weight unparametrized")
        self.bits = bits
        #: the largest code: ``2**(bits-1) - 1``, or less where an int8 kernel needs it
        #: (set by :func:`searchcomp.choices.actquant.simulate_int8`; part of the
        #: architecture, not of the state: a rebuild with the same scheme sets it again)
        self.levels = 2 ** (bits - 1) - 1
        self.register_buffer("clip", (clip.detach().float().clone() if clip is not None
                                      else torch.ones(channels)))

    def dequantized(self, w: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_tensor(w, self.bits, self.clip, self.levels)
        view = (-1,) + (1,) * (w.dim() - 1) if w.dim() > 0 else ()
        return q * scale.reshape(view)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # Same STE as ``w + (deq - w).detach()``, but the value is deq exactly
        # (w - w.detach() is exactly zero), so the round trip through integers is exact.
        return self.dequantized(w) + (w - w.detach())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # weights saved before clipping existed used max-abs scales: a ratio of 1
        state_dict.setdefault(prefix + "clip", torch.ones_like(self.clip))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        full = self.levels == 2 ** (self.bits - 1) - 1
        return f"bits={self.bits}" + ("" if full else f", levels=+-{self.levels}")


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


def quantize_module(module: nn.Module, bits: int, clip: str = "mse") -> int:
    """Quantize every weight of ``module`` (recursively, itself included) to ``bits``.

    Covered: the ``weight`` of each Conv2d, Conv3d and Linear, plus the tensors any module lists
    in a ``quant_weights`` attribute (how custom layers opt in). Calling it again with the same
    width is a no-op; a different width raises, since re-quantizing an already quantized weight
    would compound the rounding. ``bits=32`` (float) quantizes nothing.

    ``clip``: how each channel's range is chosen: ``"mse"`` (the clipping ratio with the least
    squared error, :func:`mse_clip`) or ``"max"`` (max-abs, no clipping; also what to use when
    a trained state, with its own ratios, is loaded right after).

    Returns how many tensors under ``module`` are quantized at ``bits`` after the call.
    """
    if clip not in ("mse", "max"):
        raise ValueError(f"clip must be 'mse' or 'max', got {clip!r}")
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
            w = getattr(m, n).detach()
            ratios = mse_clip(w, bits) if clip == "mse" else None
            qw = QuantizeWeight(bits, ratios, channels=w.shape[0] if w.dim() else 1)
            parametrize.register_parametrization(m, n, qw.to(w.device))
        count += 1
    return count


def weight_levels(module: nn.Module, name: str = "weight") -> int | None:
    """The largest integer code of a quantized tensor (None when it is float)."""
    q = _quantizer(module, name)
    return None if q is None else int(q.levels)


def limit_levels(module: nn.Module, levels: int) -> int:
    """Cap the largest code of every quantized tensor under ``module`` at ``levels`` (an int8
    kernel's range: 8-bit weights within +-63 under ``reduce_range``); returns how many
    tensors changed."""
    changed = 0
    for _, m, n in _targets(module):
        q = _quantizer(m, n)
        if q is not None and q.levels > levels:
            q.levels = int(levels)
            changed += 1
    return changed


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
        q, scale = quantize_tensor(w, qz.bits, qz.clip, qz.levels)
    dtype = torch.int8 if qz.bits <= 8 else torch.int16
    return q.to(dtype), scale


def materialize(model: nn.Module) -> nn.Module:
    """A deep copy with all parametrizations folded into plain weights (quantized values kept).

    This is the model as deployed: no fake-quant ops on the forward path (the simulated int8
    activations of :mod:`searchcomp.choices.actquant` are removed too), so latency and FLOPs
    are measured on what would actually run. ``model`` itself is left untouched.
    """
    from searchcomp.choices.actquant import strip_int8_simulation

    out = strip_int8_simulation(copy.deepcopy(model))
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
