"""Costs that follow from the model itself: parameters, MiB on disk, FLOPs.

Every figure describes the model as deployed: quantized weights at their bit width, pruned
channels gone (pruning is physical), no fake-quant ops on the forward path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from searchcomp.choices.quant import materialize
from searchcomp.deploy.packed import packed_nbytes, state_entries


def count_params(model: nn.Module) -> int:
    """Number of unique parameters (a shared or parametrized tensor is counted once).

    A quantized weight counts as its float original; its per-channel scales are not
    parameters (they are derived), but :func:`compute_size_mib` does count their bytes.
    """
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


#: what ``torch.save`` adds per stored tensor (zip entry, pickle record, alignment) beyond
#: its key, and once per file; measured on torch 2.x: see tests/test_metrics.py
RECORD_OVERHEAD_BYTES = 256
FILE_OVERHEAD_BYTES = 1400


def compute_size_mib(model: nn.Module) -> float:
    """MiB of the model in the compact format of :mod:`searchcomp.deploy.packed`.

    Sum over the state dict (parameters and persistent buffers, e.g. BN running statistics) of
    ``numel * bits / 8``: float tensors at 32 bits (they are stored as float32 whatever the
    training dtype), integer buffers at their dtype width, quantized weights at their bit width
    (bit-packed below 8) plus their float32 per-channel scales and a small shape record. The
    file format's own overhead (about 256 bytes per stored tensor) is included, so this
    matches the :func:`~searchcomp.deploy.packed.save_packed` file within 2% even for models of a
    few hundred KiB.
    """
    total = FILE_OVERHEAD_BYTES
    seen: set[tuple] = set()
    for e in state_entries(model):
        if e.module is None:
            t = e.tensor
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
            if t.numel() and ident in seen:  # tied tensors are stored once
                continue
            seen.add(ident)
            total += e.tensor.numel() * e.bits // 8 + RECORD_OVERHEAD_BYTES + len(e.key)
        else:
            channels = e.tensor.shape[0] if e.tensor.dim() else 1
            total += packed_nbytes(e.tensor.numel(), e.bits) + 4 * channels
            total += 4 * (1 + e.tensor.dim())  # the qinfo record: bits and shape
            total += 3 * (RECORD_OVERHEAD_BYTES + len(e.key)) + 12  # codes, scale, qinfo
    return total / 2**20


def count_flops(model: nn.Module, input_shape: tuple[int, ...],
                deployed: nn.Module | None = None) -> int:
    """FLOPs of one forward pass of a single example, by ``torch.utils.flop_counter``.

    ``input_shape`` is the shape of one example without the batch dimension, e.g. (3, 32, 32).
    Convention: FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions and
    matmuls (Linear) and nothing for element-wise ops (BN, ReLU, residual adds, pooling). It is
    therefore twice the figure torchvision's model docs call "GFLOPS", which are really GMACs:
    resnet18 at 3x224x224 with 1000 classes gives 3,628,146,688 here (= 2 x 1,814,073,344 MACs)
    vs torchvision's "1.81 GFLOPS". ``deployed``: ``materialize(model)``, if at hand.
    """
    m = (deployed if deployed is not None else materialize(model)).cpu().eval()
    dtype = next((p.dtype for p in m.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(1, *input_shape, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        m(x)
    return int(counter.get_total_flops())
