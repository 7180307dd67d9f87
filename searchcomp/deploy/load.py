"""``searchcomp.load``: an exported model back as an ``nn.Module``, with torch alone.

Neither Optuna nor torch-pruning is needed: a ``state_dict`` export is rebuilt from its
``recipe.yaml`` (the base architecture, the layer sizes pruning left, the recipe's
replacements) and the stored integer weights; TorchScript is ``torch.jit.load``; ONNX runs
in onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from searchcomp.deploy.formats import read_info
from searchcomp.errors import SearchcompError


def load(folder: str | os.PathLike[str], threads: int | None = None) -> nn.Module:
    """A ready model (eval mode) from an export folder, computing what the exported model does.

    ``state_dict``: the architecture rebuilt from ``recipe.yaml`` with the stored weights
    (quantized ones dequantized); ``torchscript``: ``torch.jit.load``; ``onnx`` and
    ``onnx-int8``: an ``nn.Module`` running the file in onnxruntime (``threads`` intra-op
    threads; int8 kernels for ``onnx-int8``). Inputs are
    float32 ``N x C x H x W`` images normalised with ``recipe.yaml``'s ``normalize``.
    """
    folder = Path(folder)
    info = read_info(folder)
    path = folder / info["file"]
    if info["format"] == "torchscript":
        from searchcomp.deploy.torchscript import load_torchscript

        return load_torchscript(path)
    if info["format"] in ("onnx", "onnx-int8"):
        from searchcomp.deploy.onnx import OnnxModule

        return OnnxModule(path, threads, int8=info["format"] == "onnx-int8")
    from searchcomp.deploy.packed import load_packed

    model = architecture(info)
    try:
        model.load_state_dict(load_packed(path))
    except RuntimeError as e:
        raise SearchcompError(f"{path} does not fit the architecture of its recipe.yaml: "
                              f"{str(e).splitlines()[0]}") from None
    return model.eval()


def architecture(info: dict) -> nn.Module:
    """The float architecture (fresh weights) of an export's ``recipe.yaml``."""
    import torch

    from searchcomp.candidate import Recipe, rebuild
    from searchcomp.config import ChoiceSet, ModelConfig
    from searchcomp.models import Block, build_model

    cfg = ModelConfig(**info["model"])
    blocks = [Block(b["name"], tuple(b["convs"]), ChoiceSet()) for b in info["blocks"]]
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the weights are replaced by the stored ones: keep RNG untouched
        arch = build_model(cfg)
    return rebuild(arch, Recipe.from_dict(info["recipe"]), blocks, info["head_name"],
                   info.get("resized") or {})
