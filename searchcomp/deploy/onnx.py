"""ONNX artifacts: the one exporter and the one onnxruntime session builder of the package."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

ONNX_OPSET = 17


def export_proto(model: nn.Module, example: Tensor, *, fold_constants: bool = False,
                 legacy_only: bool = False):
    """Export an eval-mode ``model`` to an ONNX ``ModelProto`` with a dynamic batch dimension.

    Uses the TorchScript-based exporter (``dynamo=False``): for CNNs it is fast, keeps the
    integer weights' ``DequantizeLinear`` nodes, and names every node after the module that
    computed it (``/layer1/layer1.0/conv1/Conv``), which the int8 exporter relies on. With
    ``fold_constants`` it also folds BatchNorm into the conv before it. If that exporter is
    gone, the torch.export-based one is used, unless ``legacy_only``.
    """
    import onnx

    kwargs = {"input_names": ["input"], "output_names": ["output"]}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        try:
            torch.onnx.export(model, (example,), buf, opset_version=ONNX_OPSET,
                              dynamo=False, do_constant_folding=fold_constants,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              **kwargs)
        except Exception:  # legacy exporter missing or unable: use the dynamo one
            if legacy_only:
                raise
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.onnx")
                torch.onnx.export(model, (example,), path, dynamo=True, verbose=False,
                                  **kwargs)
                return onnx.load(path)
    return onnx.load_from_string(buf.getvalue())


def onnx_bytes(model: nn.Module, example: Tensor) -> bytes:
    """The ``model.onnx`` of an ``onnx`` export: ``model`` (float, or from
    :func:`~searchcomp.deploy.integer.integer_model`) exported, names compacted.

    Constant folding is off: it would fold the dequantization of the integer initializers
    into float ones and undo the compression (onnxruntime folds or fuses at load instead).
    """
    proto = export_proto(model, example)
    compact(proto)
    return proto.SerializeToString()


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike[str]) -> None:
    """Write :func:`onnx_bytes` to ``path``."""
    Path(path).write_bytes(onnx_bytes(model, example))


def compact(proto, initializers: bool = False) -> None:
    """Short node and intermediate value names, no doc strings (in place): the exporter's
    names (``/layer1/layer1.0/conv1/weight_quant/Constant_1_output_0``) cost more than the
    weights of a small model. Graph input/output names are kept, and initializer names too
    unless ``initializers``."""
    import onnx

    g = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):
        return  # subgraphs may refer to outer names: leave such a graph as exported
    keep = {v.name for v in (*g.input, *g.output)}
    if not initializers:
        keep |= {i.name for i in g.initializer}
    names: dict[str, str] = {}
    for i, init in enumerate(g.initializer):
        if init.name not in keep:
            names[init.name] = f"w{i}"
            init.name = names[init.name]
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


def session(model: str | os.PathLike[str] | bytes, threads: int | None = None,
            int8: bool = False):
    """An onnxruntime CPU session for ``model`` (a path or the file's bytes; ``threads``
    intra-op threads if given).

    Without ``int8`` (``onnx`` artifacts) the ``DequantizeLinear`` of constant int8 weights is
    folded once at load, like every other constant weight computation: only the weights are
    quantized, so no int8 kernel would apply. With ``int8`` (``onnx-int8`` artifacts) the QDQ
    pairs are kept for onnxruntime to fuse into int8 kernels (``QLinearConv``, ...).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not int8:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def runtime_name() -> str:
    """``onnxruntime <version> CPUExecutionProvider``."""
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} CPUExecutionProvider"


class OnnxModule(nn.Module):
    """An ONNX file run by onnxruntime, as an ``nn.Module``: tensors in, tensors out."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None,
                 int8: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.int8 = int8
        self.session = session(path, threads, int8=int8)
        self.input_name = self.session.get_inputs()[0].name
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = x.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])

    def extra_repr(self) -> str:
        return (f"{self.path.name}, onnxruntime CPUExecutionProvider"
                + (", int8 kernels" if self.int8 else ""))


def initializer_dtypes(path: str | os.PathLike[str]) -> dict[str, str]:
    """Name -> ONNX data type name (``INT8``, ``UINT8``, ``FLOAT``, ...) of every initializer."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in m.graph.initializer}
