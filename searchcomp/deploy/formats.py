"""The files an export writes: ``recipe.yaml`` (how to rebuild it) and one model file.

* ``state_dict``  ``model.pt``: the compact state of :mod:`searchcomp.deploy.packed`
  (quantized weights as int8/int16 or bit-packed uint8); loading rebuilds the architecture
  from ``recipe.yaml``. Runs in torch eager.
* ``torchscript`` ``model.torchscript.pt``: the traced integer-weight model
  (:func:`~searchcomp.deploy.integer.integer_model`), dequantized in the graph.
* ``onnx``        ``model.onnx``: the same model in ONNX (8-bit weights as int8 initializers
  + ``DequantizeLinear``, 16-bit as int16, 6/4/2-bit bit-packed uint8). Runs in onnxruntime,
  in float.
* ``onnx-int8``   ``model.int8.onnx``: blocks at <= 8 bits as int8 QDQ operators that
  onnxruntime runs with int8 kernels (:mod:`searchcomp.deploy.int8`); the rest float.

Every format is first serialized in memory (:func:`serialize`): the search counts those bytes
as a trial's ``size_mib``, and the export writes the very same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from searchcomp.errors import SearchcompError

FORMATS = {"state_dict": "model.pt", "torchscript": "model.torchscript.pt", "onnx": "model.onnx",
           "onnx-int8": "model.int8.onnx"}
RECIPE_FILE = "recipe.yaml"
#: where each runtime turns the stored integer weights into the float ones it computes with
DEQUANT = {
    "state_dict": "Integer weights are dequantized when the file is loaded.",
    "torchscript": "Integer weights are dequantized at the first call and kept in memory.",
    "onnx": "Integer weights are dequantized when the session starts (constant folding, "
            "session.disable_quant_qdq=1: only weights are quantized, no int8 kernel applies).",
    "onnx-int8": "Blocks at <= 8 bits run int8 kernels (QDQ fused into QLinearConv, ...; "
                 "activations uint8, calibrated on training images); other layers run float.",
}


def serialize(model: nn.Module, fmt: str, input_shape: tuple[int, ...] | None = None,
              calib: Tensor | None = None) -> bytes:
    """The bytes of ``model``'s file in format ``fmt``, made in memory.

    ``input_shape`` (one example, no batch dimension) is needed by every format but
    ``state_dict``; ``calib`` (training images) by ``onnx-int8`` when a block runs int8.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "state_dict":
        from searchcomp.deploy.packed import packed_bytes

        return packed_bytes(model)
    if input_shape is None:
        raise ValueError(f"the {fmt} format needs the input shape")
    from searchcomp.deploy.integer import integer_model

    example = torch.zeros(1, *input_shape)
    if fmt == "torchscript":
        from searchcomp.deploy.torchscript import torchscript_bytes

        return torchscript_bytes(integer_model(model, cache=True), example)
    if fmt == "onnx":
        from searchcomp.deploy.onnx import onnx_bytes

        return onnx_bytes(integer_model(model), example)
    from searchcomp.deploy.int8 import int8_onnx_bytes

    return int8_onnx_bytes(model, example, calib)


def write_artifact(model: nn.Module, info: dict[str, Any], folder: Path,
                   calib: Tensor | None = None, data: bytes | None = None) -> Path:
    """Write ``recipe.yaml`` (``info``) and ``model`` in ``info["format"]`` into ``folder``
    (``data``: its :func:`serialize` bytes, if already made); returns the model file's path.
    """
    (folder / RECIPE_FILE).write_text(yaml.safe_dump(info, sort_keys=False))
    path = folder / info["file"]
    if data is None:
        data = serialize(model, info["format"], tuple(info["input_shape"]), calib)
    path.write_bytes(data)
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
