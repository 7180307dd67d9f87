"""The files an export writes: ``recipe.yaml`` (how to rebuild it) and one model file.

* ``state_dict``  ``model.pt``: the compact state of :mod:`searchcomp.deploy.packed`
  (quantized weights as int8/int16 or bit-packed uint8); loading rebuilds the architecture
  from ``recipe.yaml``. Runs in torch eager.
* ``torchscript`` ``model.torchscript.pt``: the traced integer-weight model
  (:func:`~searchcomp.deploy.integer.integer_model`), dequantized in the graph.
* ``onnx``        ``model.onnx``: the same model in ONNX (8-bit weights as int8 initializers
  + ``DequantizeLinear``, 16-bit as int16, 6/4/2-bit bit-packed uint8). Runs in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from searchcomp.errors import SearchcompError

FORMATS = {"state_dict": "model.pt", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
RECIPE_FILE = "recipe.yaml"
#: where each runtime turns the stored integer weights into the float ones it computes with
DEQUANT = {
    "state_dict": "Integer weights are dequantized when the file is loaded.",
    "torchscript": "Integer weights are dequantized at the first call and kept in memory.",
    "onnx": "Integer weights are dequantized when the session starts (constant folding, "
            "session.disable_quant_qdq=1: only weights are quantized, no int8 kernel applies).",
}


def write_artifact(model: nn.Module, info: dict[str, Any], folder: Path) -> Path:
    """Write ``recipe.yaml`` (``info``) and ``model`` in ``info["format"]`` into ``folder``;
    returns the model file's path."""
    from searchcomp.deploy.integer import integer_model

    (folder / RECIPE_FILE).write_text(yaml.safe_dump(info, sort_keys=False))
    path = folder / info["file"]
    if info["format"] == "state_dict":
        from searchcomp.deploy.packed import save_packed

        save_packed(model, path)
        return path
    example = torch.zeros(1, *info["input_shape"])
    if info["format"] == "torchscript":
        from searchcomp.deploy.torchscript import save_torchscript

        save_torchscript(integer_model(model, cache=True), example, path)
    else:
        from searchcomp.deploy.onnx import export_onnx

        export_onnx(integer_model(model), example, path)
    return path


def read_info(folder: Path) -> dict[str, Any]:
    """The ``recipe.yaml`` of an export folder, checked."""
    path = folder / RECIPE_FILE
    if not path.is_file():
        raise SearchcompError(f"{folder} is not a searchcomp export: {RECIPE_FILE} is missing")
    info = yaml.safe_load(path.read_text())
    if not isinstance(info, dict) or info.get("format") not in FORMATS:
        raise SearchcompError(f"{path}: not a searchcomp export recipe (no known 'format')")
    if not (folder / info["file"]).is_file():
        raise SearchcompError(f"{folder}: the model file {info['file']} is missing")
    return info
