"""Integer weights inside an ONNX graph: the codes stored, computed back at session start.

An initializer of the graph is replaced by a small constant subgraph that yields the same
tensor from fewer bytes: bit-packed 2/4/6-bit codes (the byte layout of
:mod:`searchcomp.deploy.packed`) unpacked with integer ``Div``/``Mod``, then cast to int8; and
for a float weight, its int8/int16/packed codes times its per-channel float32 scale. Every
input of these nodes is constant, so onnxruntime folds them once when the session starts: an
unpacked int8 weight then feeds its ``DequantizeLinear`` like any int8 initializer (and the
int8 kernels fuse as usual), a dequantized float weight feeds its float op.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from searchcomp.deploy.packed import encode_codes


def _const(graph, name: str, array: np.ndarray) -> str:
    from onnx import numpy_helper

    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _node(nodes: list, op: str, inputs: list[str], output: str, **attrs) -> str:
    from onnx import helper

    nodes.append(helper.make_node(op, inputs, [output], name=f"{output}/{op}", **attrs))
    return output


def _remove_initializer(graph, name: str):
    for i, init in enumerate(graph.initializer):
        if init.name == name:
            return graph.initializer.pop(i)
    raise KeyError(name)


def int8_multiple(bits: int) -> int:
    """The factor b-bit codes are spread by in int8: ``floor(127 / qmax)`` (2 bits: 127,
    4 bits: 18, 6 bits: 4, 8 bits: 1). The int8 codes ``q * m`` at scale ``s / m`` are the
    same weights, but onnxruntime's int32 bias, quantized at (input scale x weight scale),
    gets an ``m`` times finer grid: at 2 bits the coarse one moved outputs by a third of an
    output step."""
    return 127 // (2 ** (bits - 1) - 1)


def _unpacked(graph, nodes: list, name: str, codes: np.ndarray, bits: int,
              multiple: int = 1, zero_point: int = 0) -> str:
    """Nodes computing the int8 ``codes * multiple`` (``codes`` within ``bits``) from the
    packed bytes of ``codes`` (with a ``zero_point`` of 128: the uint8 ``codes * multiple +
    128``); returns the name of the tensor (``name``), in the shape of ``codes``."""
    from onnx import TensorProto

    packed = encode_codes(torch.from_numpy(codes.astype(np.int64)), bits).numpy()
    group = 8 // math.gcd(8, bits)  # codes per ``nbytes`` bytes
    nbytes = group * bits // 8
    p = f"{name}.packed"
    x = _node(nodes, "Cast", [_const(graph, p, packed)], f"{p}.i32", to=TensorProto.INT32)
    x = _node(nodes, "Reshape", [x, _const(graph, f"{p}.rows", np.array([-1, nbytes]))],
              f"{p}.rows_out")
    if nbytes > 1:
        weights = np.array([256 ** i for i in range(nbytes)], dtype=np.int32)
        x = _node(nodes, "Mul", [x, _const(graph, f"{p}.bytepos", weights)], f"{p}.shifted")
        x = _node(nodes, "ReduceSum", [x, _const(graph, f"{p}.axis", np.array([1]))],
                  f"{p}.word", keepdims=1)
    shifts = np.array([2 ** (bits * j) for j in range(group)], dtype=np.int32)
    x = _node(nodes, "Div", [x, _const(graph, f"{p}.shifts", shifts)], f"{p}.down")
    x = _node(nodes, "Mod", [x, _const(graph, f"{p}.mod", np.array([2 ** bits], np.int32))],
              f"{p}.unsigned")
    x = _node(nodes, "Reshape", [x, _const(graph, f"{p}.flat", np.array([-1]))], f"{p}.flat_out")
    x = _node(nodes, "Slice", [x, _const(graph, f"{p}.start", np.array([0])),
                               _const(graph, f"{p}.stop", np.array([codes.size]))], f"{p}.codes")
    neg = _node(nodes, "Greater", [x, _const(graph, f"{p}.half",
                                              np.array([2 ** (bits - 1) - 1], np.int32))],
                f"{p}.neg")
    neg = _node(nodes, "Cast", [neg], f"{p}.neg_i32", to=TensorProto.INT32)
    wrap = _node(nodes, "Mul", [neg, _const(graph, f"{p}.range", np.array([2 ** bits], np.int32))],
                 f"{p}.wrap")
    x = _node(nodes, "Sub", [x, wrap], f"{p}.signed")
    if multiple != 1:
        x = _node(nodes, "Mul", [x, _const(graph, f"{p}.multiple",
                                           np.array([multiple], np.int32))], f"{p}.spread")
    if zero_point:
        x = _node(nodes, "Add", [x, _const(graph, f"{p}.zero_point",
                                           np.array([zero_point], np.int32))], f"{p}.shifted_u8")
    x = _node(nodes, "Cast", [x], f"{p}.i8",
              to=TensorProto.UINT8 if zero_point else TensorProto.INT8)
    return _node(nodes, "Reshape", [x, _const(graph, f"{p}.shape",
                                              np.array(codes.shape, dtype=np.int64))], name)


def pack_int8_initializer(graph, name: str, bits: int, multiple: int | None = None,
                          zero_point: int = 0) -> None:
    """Store the int8 initializer ``name`` (``bits``-bit codes times ``multiple``, default
    :func:`int8_multiple`; uint8 codes shifted by ``zero_point`` 128 for uint8 weights) as
    the packed ``bits``-bit codes, with a constant subgraph that outputs ``name`` again (in
    place)."""
    from onnx import numpy_helper

    spread = numpy_helper.to_array(_remove_initializer(graph, name)).astype(np.int64)
    spread = spread - zero_point
    multiple = int8_multiple(bits) if multiple is None else int(multiple)
    qmax = 2 ** (bits - 1) - 1
    codes = spread // multiple
    if not np.array_equal(codes * multiple, spread) or (
            codes.size and int(np.abs(codes).max()) > qmax):
        raise RuntimeError(f"int8 weight {name} is not {bits}-bit codes x {multiple}")
    nodes: list = []
    _unpacked(graph, nodes, name, codes.astype(np.int8), bits, multiple, zero_point)
    _prepend(graph, nodes)


def store_as_codes(graph, name: str, bits: int, levels: int | None = None) -> float:
    """Replace the float initializer ``name`` of a ``bits``-bit weight by its integer codes
    (int8, int16, or packed) and float32 per-channel scales (axis 0) with a constant subgraph
    that outputs ``name`` as before. Returns the largest relative difference between the
    float weight and codes x scale (a weight on its grid gives ~1e-7).

    The scale of a channel is ``max|w_c| / qmax``: searchcomp's quantizer gives the largest
    weight of each channel the code ``+-qmax`` (see :func:`searchcomp.choices.quant.
    quantize_tensor`), and folding a BatchNorm into the weight scales a channel as a whole.
    ``levels``: the weight's largest code when below ``qmax`` (an int8 scheme's range).
    """
    from onnx import TensorProto, numpy_helper

    w = numpy_helper.to_array(_remove_initializer(graph, name)).astype(np.float64)
    qmax = 2 ** (bits - 1) - 1 if levels is None else int(levels)
    flat = w.reshape(w.shape[0], -1) if w.ndim else w.reshape(1, 1)
    amax = np.abs(flat).max(axis=1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.round(flat / scale[:, None]), -qmax, qmax)
    err = float(np.abs(codes * scale[:, None] - flat).max() / max(float(amax.max()), 1e-30))
    codes = codes.reshape(w.shape)
    nodes: list = []
    if bits < 8:
        q = _unpacked(graph, nodes, f"{name}.codes", codes.astype(np.int8), bits)
    else:
        q = _const(graph, f"{name}.codes", codes.astype(np.int8 if bits == 8 else np.int16))
    q = _node(nodes, "Cast", [q], f"{name}.float", to=TensorProto.FLOAT)
    view = scale.reshape((-1,) + (1,) * (w.ndim - 1)) if w.ndim else scale.reshape(())
    _node(nodes, "Mul", [q, _const(graph, f"{name}.scale", view)], name)
    _prepend(graph, nodes)
    return err


def _prepend(graph, nodes: list) -> None:
    """Put ``nodes`` (inputs: initializers only) first, keeping the graph topologically sorted."""
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + rest)
