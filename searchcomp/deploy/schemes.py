"""Which int8 scheme (:mod:`searchcomp.config.int8`) to ship on this CPU, by measurement:
a probe of each scheme's kernel at the ends of its range (:func:`kernel_exact`) and the
choice among measured schemes (:func:`choose_scheme`; the measuring is
:mod:`searchcomp.search.int8_scheme`)."""

from __future__ import annotations

import functools
import math
from typing import Any

from searchcomp.config.int8 import SCHEMES, Int8Scheme, get_scheme

__all__ = ["ACCURACY_SLACK", "SCHEMES", "SIM_GAP", "Int8Scheme", "choose_scheme",
           "get_scheme", "kernel_exact", "quant_types"]

#: a scheme's accuracy may sit this far below the float base's on validation and still count
#: as "within noise" (besides two binomial standard errors of the base's accuracy)
ACCURACY_SLACK = 0.01
#: a scheme's file and its own simulation may disagree this much on validation (0.5 pt):
#: more and the fine-tune's simulation would not predict the file
SIM_GAP = 0.005


def quant_types(scheme: Int8Scheme) -> tuple[Any, Any]:
    """onnxruntime's ``(activation_type, weight_type)`` of ``scheme``."""
    from onnxruntime.quantization import QuantType

    t = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    return t[scheme.activations], t[scheme.weights]


@functools.cache
def kernel_exact(name: str) -> bool:
    """Whether this CPU's onnxruntime int8 convolution computes the scheme's extreme case
    exactly: a QDQ 1x1 convolution over 64 channels (fused by onnxruntime into its int8
    kernel, as in a real artifact, with the same graph transformations) with every
    activation and weight at its largest code, against the exact integer result. False on
    AVX2-only CPUs where u8 x s8 products are summed pairwise in int16 with saturation
    (``vpmaddubsw``); a probe of this machine, not an assumption about CPUs."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    s = get_scheme(name)
    channels, out = 64, 4
    types = {"u8": np.uint8, "s8": np.int8}
    a_np, w_np = types[s.activations], types[s.weights]
    a_zero = s.act_qmin  # the zero point at the bottom: code qmax is the largest value
    x_value = float(s.act_qmax - a_zero)
    exact = channels * x_value * s.weight_qmax
    y_scale = float(2 ** math.ceil(math.log2(exact / 100)))  # lands near code 100
    w = np.full((out, channels, 1, 1), s.weight_qmax + s.weight_zero_point, w_np)
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
             numpy_helper.from_array(np.array(a_zero, a_np), "xz"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.ones(out, np.float32), "ws"),
             numpy_helper.from_array(np.full(out, s.weight_zero_point, w_np), "wz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(a_zero, a_np), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    graph = helper.make_graph(
        nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       [1, channels, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, out, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.full((1, channels, 4, 4), x_value, np.float32)})[0]
    return bool(np.all(np.abs(y - exact) <= y_scale))


def choose_scheme(rows: list[dict[str, Any]], float_accuracy: float, val_images: int,
                  float_latency_ms: float) -> dict[str, Any]:
    """Pick the scheme to ship from measured ``rows`` (one per scheme: ``scheme``,
    ``latency_ms``, ``accuracy`` of its file on validation, ``sim_accuracy`` of the model
    simulating it, and ``exact`` from :func:`kernel_exact`): the fastest whose file is
    within noise of the float base (``float_accuracy`` on ``val_images`` images: at most
    two binomial standard errors plus :data:`ACCURACY_SLACK` below) and agrees with its own
    simulation within :data:`SIM_GAP`.

    Returns ``{"scheme", "reason", "rows", "faster_than_float"}``, each row marked
    ``accepted`` with its ``verdict``. With no acceptable scheme, the one closest to the
    float accuracy is kept (``scheme`` is still set; ``reason`` says so).
    """
    se = math.sqrt(max(float_accuracy * (1 - float_accuracy), 1e-12) / max(val_images, 1))
    floor = float_accuracy - 2 * se - ACCURACY_SLACK
    out = []
    for r in rows:
        r = dict(r)
        why = []
        if not r.get("exact", True):
            why.append("the CPU's kernel is not exact at the range's ends (saturation)")
        if r["accuracy"] < floor:
            why.append(f"file accuracy {r['accuracy']:.4f} < {floor:.4f} (float "
                       f"{float_accuracy:.4f} - 2 SE - {ACCURACY_SLACK:g})")
        gap = r.get("sim_accuracy")
        if gap is not None and abs(r["accuracy"] - gap) > SIM_GAP + 1e-9:
            why.append(f"file {r['accuracy']:.4f} vs its simulation {gap:.4f}: "
                       f"{100 * (r['accuracy'] - gap):+.1f} pt")
        r["accepted"] = not why
        r["speedup"] = float_latency_ms / r["latency_ms"] if r["latency_ms"] else None
        r["verdict"] = "; ".join(why) if why else (
            "accurate; " + (f"{r['speedup']:.2f}x faster than float" if (r["speedup"] or 0) > 1
                            else f"slower than float ({r['speedup']:.2f}x)"))
        out.append(r)
    ok = [r for r in out if r["accepted"]]
    if ok:
        best = min(ok, key=lambda r: r["latency_ms"])
        faster = (best["speedup"] or 0) > 1
        reason = (f"{best['scheme']}: the fastest accurate scheme, {best['latency_ms']:.3f} ms "
                  f"({best['speedup']:.2f}x the float file's {float_latency_ms:.3f} ms)")
        if not faster:
            reason += "; no int8 scheme is faster than float on this CPU: int8 buys size only"
    else:
        best = min(out, key=lambda r: abs(r["accuracy"] - float_accuracy))
        faster = (best["speedup"] or 0) > 1
        reason = (f"{best['scheme']}: no scheme kept the float accuracy on this CPU; the "
                  "closest is used and the trials' figures say what it costs")
    return {"scheme": best["scheme"], "reason": reason, "rows": out,
            "faster_than_float": faster}


def format_scheme_table(record: dict[str, Any]) -> list[str]:
    """The scheme record as lines of text: the measured table (if any) and the choice."""
    lines = []
    rows = record.get("rows") or []
    if rows:
        lines.append(f"measured on the all-8-bit base, {record.get('cpu', '')}, "
                     f"{record.get('threads', 1)} thread(s), batch {record.get('batch_size', 1)}"
                     f"; float file {record['float_latency_ms']:.3f} ms, float base val "
                     f"{record['float_accuracy']:.4f} ({record['val_images']} images)")
        lines.append(f"  {'scheme':<9} {'latency ms':>10} {'vs float':>8} {'file acc':>9} "
                     f"{'sim acc':>8} {'exact':>5}  verdict")
        for r in rows:
            mark = "*" if r["scheme"] == record["scheme"] else " "
            lines.append(f"{mark} {r['scheme']:<9} {r['latency_ms']:>10.3f} "
                         f"{r['speedup']:>7.2f}x {r['accuracy']:>9.4f} "
                         f"{r['sim_accuracy']:>8.4f} {'yes' if r['exact'] else 'NO':>5}  "
                         f"{r['verdict']}")
    lines.append(f"scheme {record['reason']}")
    return lines
