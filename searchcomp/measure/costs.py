"""Costs that follow from the model itself: parameters, MiB of the shipped file, FLOPs.

Every figure describes the model as deployed: quantized weights at their bit width, pruned
channels gone (pruning is physical), no fake-quant ops on the forward path.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from searchcomp.choices.quant import materialize


def count_params(model: nn.Module) -> int:
    """Number of unique parameters (a shared or parametrized tensor is counted once).

    A quantized weight counts as its float original; its per-channel scales are not
    parameters (they are derived), but :func:`compute_size_mib` does count their bytes.
    """
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def compute_size_mib(model: nn.Module, runtime: str = "torch",
                     input_shape: tuple[int, ...] | None = None,
                     calib: torch.Tensor | None = None) -> float:
    """MiB of the artifact ``runtime`` ships for ``model``: the byte count of the file
    ``export`` writes for it, serialized in memory in that format (no formula: the file's own
    structure is counted as it is), / 2**20.

    ``torch``: the compact state_dict of :mod:`searchcomp.deploy.packed` (quantized weights
    bit-packed, float tensors as float32, BN statistics included); ``torchscript``,
    ``onnxruntime``, ``onnxruntime-int8``: their model files (these need ``input_shape``;
    the int8 one also ``calib``, the training images it calibrates its int8 blocks on).
    """
    from searchcomp.deploy.runtime import get_runtime

    return len(get_runtime(runtime).artifact(model, input_shape, calib)) / 2**20


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
