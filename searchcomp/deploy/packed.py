"""Compact on-disk format: quantized weights as (bit-packed) integers, everything else float32.

The reported model size is only honest if a file of that size can actually be written and read
back; this module is that file. A quantized weight ``<prefix>.weight`` is stored as

* ``<prefix>.weight``        integers: int16 (16 bits), int8 (8 bits), or for 2, 4 and 6 bits a
                             flat uint8 tensor of bit-packed two's-complement codes (four 2-bit,
                             two 4-bit, or four 6-bit values per three bytes),
* ``<prefix>.weight.scale``  float32 per-output-channel scales,
* ``<prefix>.weight.qinfo``  int32 ``[bits, *shape]`` (bit width and original shape).

These companion keys cannot clash with real state-dict keys: ``weight`` is a tensor, so the
module has no child called ``weight``. Other float tensors are stored as float32, integer
buffers (e.g. BN ``num_batches_tracked``) at their own dtype. ``unpack_state_dict`` gives a
plain float state dict that loads (strictly) into ``quant.materialize(model)``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from searchcomp.choices.quant import integer_weights, weight_bits

SCALE_SUFFIX = ".scale"
QINFO_SUFFIX = ".qinfo"
_INT_DTYPES = {16: torch.int16, 8: torch.int8}


@dataclass
class StateEntry:
    """One tensor of the model as deployed: its plain state-dict key and how it is stored."""

    key: str
    tensor: torch.Tensor  # float value (for quantized: the fake-quantized value), or buffer
    bits: int  # 32 for float; quantization width otherwise; dtype width for integer buffers
    module: nn.Module | None = None  # owner of a quantized tensor
    name: str = ""


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes the packed integer codes of ``numel`` values at ``bits`` take (padding included)."""
    if bits in _INT_DTYPES:
        return numel * bits // 8
    group = 8 // math.gcd(8, bits)  # values per whole number of bytes
    return math.ceil(numel / group) * group * bits // 8


def state_entries(model: nn.Module) -> Iterator[StateEntry]:
    """The tensors of ``model``'s state dict under their deployed (unparametrized) keys.

    Parametrized tensors appear once, under the plain key (``conv.weight``), instead of as
    ``conv.parametrizations.weight.original``; shared tensors appear under each key, as in a
    normal state dict. The ranges of simulated int8 activations
    (:mod:`searchcomp.choices.actquant`) are training state, not part of the model: left out.
    """
    from searchcomp.choices.actquant import activation_quantizers

    simulated = tuple(f"{n}." for n in activation_quantizers(model))
    owners: dict[str, tuple[nn.Module, str, str]] = {}  # state-dict prefix -> owner, plain key
    for mname, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for n in m.parametrizations:
                dot = f"{mname}." if mname else ""
                owners[f"{dot}parametrizations.{n}."] = (m, n, dot + n)
    seen: set[str] = set()
    for key, t in model.state_dict(keep_vars=True).items():
        if key.startswith(simulated):
            continue
        owner = next((o for pre, o in owners.items() if key.startswith(pre)), None)
        if owner is None:
            yield StateEntry(key, t.detach(), _dtype_bits(t))
            continue
        m, n, plain = owner
        if plain in seen:
            continue
        seen.add(plain)
        bits = weight_bits(m, n)
        with torch.no_grad():
            value = getattr(m, n).detach()
        yield StateEntry(plain, value, bits, m if bits != 32 else None, n)


def _dtype_bits(t: torch.Tensor) -> int:
    if t.is_floating_point() or t.is_complex():
        return 32
    return t.element_size() * 8


def _pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    group = 8 // math.gcd(8, bits)
    nbytes = group * bits // 8
    codes = (q.reshape(-1).to(torch.int64) & ((1 << bits) - 1))
    pad = (-codes.numel()) % group
    codes = torch.cat([codes, codes.new_zeros(pad)]).reshape(-1, group)
    shifts = torch.arange(group, dtype=torch.int64) * bits
    words = (codes << shifts).sum(1)
    byte_shifts = torch.arange(nbytes, dtype=torch.int64) * 8
    return ((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def _unpack_bits(data: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    group = 8 // math.gcd(8, bits)
    nbytes = group * bits // 8
    byte_shifts = torch.arange(nbytes, dtype=torch.int64) * 8
    words = (data.to(torch.int64).reshape(-1, nbytes) << byte_shifts).sum(1)
    shifts = torch.arange(group, dtype=torch.int64) * bits
    codes = ((words[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:numel]
    return torch.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)


def encode_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes as stored: int16 (16 bits), int8 (8 bits), or a flat bit-packed uint8
    tensor (6, 4, 2 bits; layout as in the module docstring)."""
    return q.to(_INT_DTYPES[bits]) if bits in _INT_DTYPES else _pack_bits(q, bits)


def pack_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The compact state dict: quantized weights as packed integers, other floats as float32."""
    out: dict[str, torch.Tensor] = {}
    for e in state_entries(model):
        if e.module is None:
            t = e.tensor
            out[e.key] = t.float().cpu() if t.is_floating_point() else t.cpu()
            continue
        q, scale = integer_weights(e.module, e.name)
        q = q.cpu()
        out[e.key] = encode_codes(q, e.bits)
        out[e.key + SCALE_SUFFIX] = scale.float().cpu()
        out[e.key + QINFO_SUFFIX] = torch.tensor([e.bits, *q.shape], dtype=torch.int32)
    return out


def unpack_state_dict(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain float state dict (quantized weights dequantized) for a ``materialize``\\ d model.

    Dequantization is ``q * scale`` in float32, the same computation the fake-quantizer does,
    so the round trip reproduces the fine-tuned model's weights exactly.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in packed.items():
        if key.endswith(SCALE_SUFFIX) or key.endswith(QINFO_SUFFIX):
            base = key.rsplit(".", 1)[0]
            if base in packed and base + QINFO_SUFFIX in packed and base + SCALE_SUFFIX in packed:
                continue  # companion of a quantized tensor
        if key + QINFO_SUFFIX not in packed:
            out[key] = t
            continue
        info = packed[key + QINFO_SUFFIX].tolist()
        bits, shape = int(info[0]), tuple(int(s) for s in info[1:])
        numel = math.prod(shape)
        if bits in _INT_DTYPES:
            q = t.to(torch.int64)
        else:
            q = _unpack_bits(t, bits, numel)
        scale = packed[key + SCALE_SUFFIX].float()
        view = (-1,) + (1,) * (len(shape) - 1) if shape else ()
        out[key] = q.reshape(shape).float() * scale.reshape(view)
    return out


def packed_bytes(model: nn.Module) -> bytes:
    """The bytes of the compact file of ``model`` (``torch.save`` of :func:`pack_state_dict`,
    serialized in memory): what :func:`save_packed` writes, byte for byte."""
    buf = io.BytesIO()
    torch.save(pack_state_dict(model), buf)
    return buf.getvalue()


def save_packed(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write the compact state dict of ``model`` to ``path``; return its bytes."""
    data = packed_bytes(model)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def load_packed(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_packed` back into a plain float state dict."""
    return unpack_state_dict(torch.load(path, map_location="cpu", weights_only=True))
