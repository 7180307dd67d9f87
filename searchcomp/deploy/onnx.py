"""ONNX artifacts: the one exporter and the one onnxruntime session builder of the package."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

ONNX_OPSET = 17


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike[str]) -> None:
    """Export an eval-mode ``model`` (float, or from
    :func:`~searchcomp.deploy.integer.integer_model`) to ONNX with a dynamic batch dimension.

    Uses the TorchScript-based exporter (``dynamo=False``): for CNNs it is fast and keeps the
    integer weights' ``DequantizeLinear`` nodes. Constant folding is off: it would fold the
    dequantization of the integer initializers into float ones and undo the compression
    (onnxruntime folds or fuses at load instead). If that exporter is gone, the
    torch.export-based one is used.
    """
    kwargs = {"input_names": ["input"], "output_names": ["output"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        try:
            torch.onnx.export(model, (example,), str(path), opset_version=ONNX_OPSET,
                              dynamo=False, do_constant_folding=False,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              **kwargs)
        except Exception:  # legacy exporter missing or unable: use the dynamo one
            torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False,
                              **kwargs)
    _compact(path)


def _compact(path: str | os.PathLike[str]) -> None:
    """Short node and intermediate value names, no doc strings: the exporter's names
    (``/layer1/layer1.0/conv1/weight_quant/Constant_1_output_0``) cost more than the
    weights of a small model. Initializer and graph input/output names are kept."""
    import onnx

    m = onnx.load(str(path))
    g = m.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):
        return  # subgraphs may refer to outer names: leave such a graph as exported
    keep = {i.name for i in g.initializer} | {v.name for v in (*g.input, *g.output)}
    names: dict[str, str] = {}
    for i, n in enumerate(g.node):
        n.name, n.doc_string = f"n{i}", ""
        for o in n.output:
            if o and o not in keep:
                names[o] = f"v{len(names)}"
    for n in g.node:
        for values in (n.input, n.output):
            for j, v in enumerate(values):
                values[j] = names.get(v, v)
    for v in g.value_info:
        v.name = names.get(v.name, v.name)
    g.doc_string = ""
    onnx.save(m, str(path))


def session(path: str | os.PathLike[str], threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (``threads`` intra-op threads if given)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # fold the DequantizeLinear of constant int8 weights once at load, like every other
    # constant weight computation: only the weights are quantized, so no int8 kernel applies
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def runtime_name() -> str:
    """``onnxruntime <version> CPUExecutionProvider``."""
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPUExecutionProvider"


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime, as an ``nn.Module``: tensors in, tensors out."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])

    def extra_repr(self) -> str:
        return f"{self.path.name}, onnxruntime CPUExecutionProvider"


def initializer_dtypes(path: str | os.PathLike[str]) -> dict[str, str]:
    """Name -> ONNX data type name (``INT8``, ``UINT8``, ``FLOAT``, ...) of every initializer."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
