"""The ``onnx-int8`` artifact: blocks at <= 8 bits run onnxruntime's int8 kernels.

Built with onnxruntime's own quantization tooling (``quantize_static``, QDQ format, per-channel
weights, per-tensor activations calibrated with ``MinMax`` on real training images, read by a
``CalibrationDataReader``; the integer types are the int8 scheme the blocks simulate,
:mod:`searchcomp.config.int8`), applied to the float model exported with BatchNorm folded:

1. every node is traced back to the module that computed it (the exporter names nodes after
   their module scope, ``/layer1/layer1.0/conv1/Conv``);
2. nodes outside the blocks that simulate int8 (:func:`searchcomp.choices.actquant.
   simulate_int8`: blocks at <= 8 bits in the ``onnxruntime-int8`` runtime) are excluded:
   16/32-bit blocks, the stem and the head stay float. Inside, ``MatMul`` stays float too
   (a Meta layer's G x G mixing, quantized per row, which per-column int8 cannot represent);
3. the int8 weights keep the trial's own integer codes: the per-channel weight scales are
   handed to the quantizer (``TensorQuantOverrides``) as ``max|w_c| / (qmax * m)`` of the
   weight's own largest code, so 8-bit codes stay as they are and 6/4/2-bit codes ``q``
   become the int8 ``q * m`` (exact: the quantizer gives each channel's largest weight the
   code ``+-qmax``; ``m``: :meth:`~searchcomp.config.int8.Int8Scheme.multiple`, which keeps
   the int32 bias grid fine and the codes within the scheme's range: +-63 under
   ``reduce_range``); uint8 weights (``u8u8``) are the same codes shifted by 128;
4. weights then take the bytes of their bit width: 6/4/2-bit int8 codes bit-packed, float
   weights of quantized (16-bit, or excluded) layers stored as codes and scales
   (:mod:`searchcomp.deploy.onnx_codes`), everything unpacked when the session starts.

The fine-tune simulated the same activation rounding (:mod:`searchcomp.choices.actquant`),
with the same calibration images and the same min/max rule, so the trial's validation
accuracy predicts this file's; the export card measures the gap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator

import numpy as np
from torch import Tensor, nn

from searchcomp.choices.actquant import int8_scheme_of, int8_units
from searchcomp.choices.quant import materialize, quantized_tensors, weight_levels
from searchcomp.config.int8 import Int8Scheme, get_scheme

#: ops whose second input is the weight, quantized per output channel along axis 0
_WEIGHTED_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1, "ConvTranspose": 1}
#: calibration images per batch fed to onnxruntime
CALIB_BATCH = 16


def _unqualified(name: str) -> str:
    """A module's scope name in the exported graph: its full name from the last non-numeric
    part on (``layer2.0.downsample.0`` -> ``downsample.0``; ``layer1.0`` stays), as torch's
    ONNX exporter names scopes."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if not parts[i].isnumeric():
            return ".".join(parts[i:])
    return name


def _scope_index(modules: set[str]) -> dict[str, list[str]]:
    by_scope: dict[str, list[str]] = {}
    for name in modules:
        if name:
            by_scope.setdefault(_unqualified(name), []).append(name)
    return by_scope


def node_module(node_name: str, modules: set[str],
                index: dict[str, list[str]] | None = None) -> str:
    """The module (full dotted name, ``""`` for the root) whose forward produced an exported
    node, from the node's scoped name: ``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1``,
    ``/layer2/layer2.0/downsample/downsample.0/Conv`` -> ``layer2.0.downsample.0``.

    Each scope is the :func:`_unqualified` name of a module called inside the previous one;
    a scope that is no module (a second call of the same ReLU, ``relu_1``) ends the walk.
    ``index``: ``_scope_index(modules)``, when resolving many nodes."""
    by_scope = index if index is not None else _scope_index(modules)
    current = ""
    for part in node_name.strip("/").split("/")[:-1]:
        inside = [n for n in by_scope.get(part, ())
                  if not current or n.startswith(current + ".")]
        if not inside:
            break
        current = min(inside, key=len)  # the nearest one
    return current


def _within(name: str, units: list[str]) -> bool:
    return any(name == u or name.startswith(u + ".") for u in units)


class _Images:
    """onnxruntime's ``CalibrationDataReader`` protocol over calibration images."""

    def __init__(self, images: Tensor, input_name: str) -> None:
        self.batches = iter([{input_name: images[i:i + CALIB_BATCH].float().numpy()}
                             for i in range(0, images.shape[0], CALIB_BATCH)])

    def get_next(self):
        return next(self.batches, None)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop the quantizer's warnings, logged on the root logger: advice to run its
    pre-processing (the exporter already folds BatchNorm and names every node; shape
    inference runs inside ``quantize_static``) and notes on layers it leaves float (e.g. a
    BatchNorm the exporter could not fold, after a channel Conv3d's reshape)."""
    class Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            path = record.pathname.replace("\\", "/")
            return not ("onnxruntime/quantization" in path and record.levelno < logging.ERROR)

    root = logging.getLogger()
    f = Drop()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


def int8_onnx_bytes(model: nn.Module, example: Tensor, calib: Tensor | None) -> bytes:
    """The ``model.int8.onnx`` of ``model`` (see the module docstring). ``calib``: the
    training images the activation ranges are calibrated on (the ones the fine-tune's
    simulation was calibrated on); needed when any block runs int8. The integer types are
    the scheme the int8 blocks simulate (:func:`~searchcomp.choices.actquant.int8_scheme_of`)."""
    from onnx import numpy_helper

    from searchcomp.deploy.onnx import compact, export_proto
    from searchcomp.deploy.onnx_codes import pack_int8_initializer, store_as_codes

    units = int8_units(model)
    scheme = int8_scheme_of(model) or get_scheme(None)
    if units and (calib is None or not len(calib)):
        raise ValueError("the onnxruntime-int8 runtime needs calibration images (calib) for "
                         f"its int8 blocks {units}")
    owned: dict[str, list[tuple[tuple[int, ...], int, int]]] = {}
    for mname, tname, bits in quantized_tensors(model):
        layer = model.get_submodule(mname)
        shape = tuple(layer.parametrizations[tname].original.shape)
        owned.setdefault(mname, []).append((shape, bits, int(weight_levels(layer, tname))))
    try:
        proto = export_proto(materialize(model), example[:1].float(), fold_constants=True,
                             legacy_only=True)
    except Exception as e:
        raise RuntimeError("the onnx-int8 artifact needs torch's TorchScript-based ONNX "
                           f"exporter, which failed: {e}") from e
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    modules = {n for n, _ in model.named_modules()}
    index = _scope_index(modules)
    weight_bits: dict[str, tuple[int, int]] = {}  # weight initializer -> (bits, largest code)
    exclude, overrides = [], {}
    for node in graph.node:
        owner = node_module(node.name, modules, index)
        int8_node = _within(owner, units) and node.op_type != "MatMul"
        if not int8_node:
            exclude.append(node.name)
        pos = _WEIGHTED_OPS.get(node.op_type)
        if pos is None or len(node.input) <= pos or node.input[pos] not in inits:
            continue
        weight = node.input[pos]
        w_shape = tuple(inits[weight].dims)
        bits, levels = next(((b, lv) for s, b, lv in owned.get(owner, ()) if s == w_shape),
                            (None, None))
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1
                                              for a in node.attribute):
            bits, int8_node = None, False  # weight not laid out [out, in]: leave it float
            exclude.append(node.name)
        if bits is None:
            continue
        weight_bits[weight] = (bits, levels)
        if int8_node and bits <= 8:
            if levels > scheme.weight_qmax:
                raise RuntimeError(f"int8 export: {owner} has codes up to {levels}, beyond "
                                   f"scheme {scheme.name}'s +-{scheme.weight_qmax}; please "
                                   "report this")
            w = numpy_helper.to_array(inits[weight]).astype(np.float64)
            amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
            step = levels * scheme.multiple(bits)
            scales = np.where(amax > 0, amax / step, 1.0)
            zp = scheme.weight_zero_point
            overrides[weight] = [{"axis": 0, "scale": np.float32(scales[0]), "zero_point": zp},
                                 *({"scale": np.float32(s), "zero_point": zp}
                                   for s in scales[1:])]
    if len(exclude) < len(graph.node):
        proto = _quantize(proto, calib, exclude, overrides, scheme)
        graph = proto.graph
    names = {i.name for i in graph.initializer}
    for weight, (bits, levels) in weight_bits.items():
        if f"{weight}_quantized" in names:
            if bits < 8:
                pack_int8_initializer(graph, f"{weight}_quantized", bits,
                                      scheme.multiple(bits), scheme.weight_zero_point)
        elif weight in names and bits < 32:
            err = store_as_codes(graph, weight, bits, levels)
            if err > 1e-4:
                raise RuntimeError(f"int8 export: weight {weight} is {err:.2g} off its {bits}-bit "
                                   "grid; please report this")
    compact(proto, initializers=True)
    if units:
        entry = proto.metadata_props.add()
        entry.key, entry.value = SCHEME_KEY, scheme.name
    return proto.SerializeToString()


def _quantize(proto, calib: Tensor, exclude: list[str], overrides: dict, scheme: Int8Scheme):
    """``quantize_static`` in QDQ format: per-channel weights (with ``overrides``),
    activations calibrated with MinMax on ``calib``, of ``scheme``'s types."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    from searchcomp.deploy.schemes import quant_types

    activation_type, weight_type = quant_types(scheme)
    with tempfile.TemporaryDirectory(prefix="searchcomp-int8-") as tmp, _quiet_quantizer():
        out = os.path.join(tmp, "int8.onnx")
        quantize_static(proto, out, _Images(calib.detach().cpu(), proto.graph.input[0].name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=scheme.reduce_range,
                        activation_type=activation_type, weight_type=weight_type,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                        extra_options={"TensorQuantOverrides": overrides,
                                       "QDQDisableWeightAdjustForInt32Bias": True})
        return onnx.load(out)


#: the metadata key of an int8 file naming its scheme
SCHEME_KEY = "searchcomp.int8_scheme"


def optimized_ops(model_bytes: bytes) -> dict[str, int]:
    """How many nodes of each op type onnxruntime runs for an artifact after its graph
    optimizations (the fusions of QDQ pairs into ``QLinearConv``, ``QLinearAdd``, ...)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = path
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        counts: dict[str, int] = {}
        for n in onnx.load(path).graph.node:
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def int8_kernels(model_bytes: bytes, ops: dict[str, int] | None = None) -> dict[str, int]:
    """How many nodes of each int8 op type onnxruntime runs for an artifact after its graph
    optimizations (``QLinearConv``, ``QLinearAdd``, ``QGemm``, ...): proof that int8
    kernels, not dequantized float ones, execute. ``ops``: :func:`optimized_ops`, if at hand."""
    ops = optimized_ops(model_bytes) if ops is None else ops
    return {k: v for k, v in ops.items()
            if k.startswith(("QLinear", "QGemm", "MatMulInteger", "ConvInteger"))}


def file_scheme(model_bytes: bytes) -> str | None:
    """The int8 scheme an ``onnx-int8`` file was written with (its metadata), or None."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    return next((p.value for p in proto.metadata_props if p.key == SCHEME_KEY), None)


def describe_int8(model_bytes: bytes) -> str:
    """What onnxruntime runs for an int8 artifact, read from the file and a session: its
    scheme and int8 kernels, or that none runs (``"int8 u8s8-rr: QLinearConv x16,
    QLinearAdd x8; float Conv x1"``, ``"float: no int8 kernel"``)."""
    ops = optimized_ops(model_bytes)
    int8 = int8_kernels(model_bytes, ops)
    floats = {k: v for k, v in ops.items() if k in ("Conv", "Gemm", "MatMul", "FusedConv",
                                                   "FusedGemm", "FusedMatMul")}
    fl = ", ".join(f"{k} x{v}" for k, v in sorted(floats.items()))
    if not int8:
        return "float: no int8 kernel" + (f" ({fl})" if fl else "")
    scheme = file_scheme(model_bytes) or "?"
    return (f"int8 {scheme}: " + ", ".join(f"{k} x{v}" for k, v in sorted(int8.items()))
            + (f"; float {fl}" if fl else ""))
