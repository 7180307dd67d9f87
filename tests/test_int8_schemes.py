"""The int8 scheme per machine: the kernel probe, the choice among measured schemes, the
simulation of each scheme, honest runtime labels and int8 in the latency table. No test
assumes a CPU: what depends on the kernels is read from the probe."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from searchcomp.choices.actquant import activation_quantizers, int8_scheme_of, simulate_int8
from searchcomp.choices.quant import integer_weights, weight_levels
from searchcomp.config.int8 import SCHEMES, get_scheme
from searchcomp.deploy.int8 import describe_int8, file_scheme, int8_onnx_bytes
from searchcomp.deploy.schemes import choose_scheme, format_scheme_table, kernel_exact
from searchcomp.measure import time_latency

from .int8_models import residual


def _row(scheme, ms, acc, sim=None, exact=True):
    return {"scheme": scheme, "latency_ms": ms, "accuracy": acc,
            "sim_accuracy": acc if sim is None else sim, "exact": exact}


def test_the_chooser_takes_the_fastest_accurate_scheme():
    rows = [_row("u8s8", 5.0, 0.90), _row("u8u8", 4.0, 0.90), _row("s8s8", 6.0, 0.90)]
    got = choose_scheme(rows, 0.90, 2000, float_latency_ms=10.0)
    assert got["scheme"] == "u8u8" and got["faster_than_float"]
    assert "2.50x" in got["reason"]
    assert all(r["accepted"] for r in got["rows"])


def test_the_chooser_refuses_a_faster_scheme_that_loses_accuracy_or_saturates():
    rows = [_row("u8s8", 3.0, 0.20), _row("u8s8-rr", 5.0, 0.90),
            _row("s8s8", 2.0, 0.90, exact=False), _row("u8u8", 4.0, 0.90, sim=0.95)]
    got = choose_scheme(rows, 0.90, 2000, float_latency_ms=10.0)
    assert got["scheme"] == "u8s8-rr"
    verdicts = {r["scheme"]: r["verdict"] for r in got["rows"]}
    assert "file accuracy 0.2000" in verdicts["u8s8"]
    assert "saturation" in verdicts["s8s8"]
    assert "simulation" in verdicts["u8u8"]  # the file disagrees with what trials simulate
    # a drop within the noise of 500 validation images is accepted
    near = choose_scheme([_row("u8s8", 3.0, 0.89)], 0.90, 500, float_latency_ms=10.0)
    assert near["rows"][0]["accepted"]


def test_no_int8_scheme_faster_than_float_is_said():
    got = choose_scheme([_row("u8s8", 12.0, 0.9), _row("u8u8", 11.0, 0.9)], 0.9, 500, 10.0)
    assert got["scheme"] == "u8u8" and not got["faster_than_float"]
    assert "int8 buys size only" in got["reason"]
    lines = format_scheme_table({**got, "float_latency_ms": 10.0, "float_accuracy": 0.9,
                                 "val_images": 500, "cpu": "cpu avx2"})
    assert any("slower than float (0.91x)" in line for line in lines)
    assert lines[-1].startswith("scheme u8u8")


def test_the_kernel_probe_finds_an_exact_scheme_on_this_cpu():
    exact = {n: kernel_exact(n) for n in SCHEMES}
    # reduce_range exists so that some u8 x s8 kernel is exact on every x86 CPU
    assert exact["u8s8-rr"] or exact["u8u8"], exact


@pytest.mark.parametrize("name", list(SCHEMES))
def test_each_scheme_is_simulated_with_its_integer_ranges(name):
    scheme = get_scheme(name)
    m, calib = residual((8, 4), scheme=name)
    assert int8_scheme_of(m) == scheme
    for q in activation_quantizers(m).values():
        assert (q.qmin, q.qmax) == (scheme.act_qmin, scheme.act_qmax)
    eight, four = m.blocks[0].conv1, m.blocks[1].conv1
    assert weight_levels(eight) == (63 if scheme.reduce_range else 127)
    assert weight_levels(four) == 7
    assert int(integer_weights(eight)[0].abs().max()) == weight_levels(eight)
    data = int8_onnx_bytes(m, calib[:1], calib)
    assert file_scheme(data) == name
    # the weight type of the file is the scheme's
    want = {"s8": onnx.TensorProto.INT8, "u8": onnx.TensorProto.UINT8}[scheme.weights]
    stored = [i for i in onnx.load_from_string(data).graph.initializer if len(i.dims) == 4]
    assert {i.data_type for i in stored} >= {want}
    if name == "u8u8":  # the signed codes shifted by 128
        w = next(numpy_helper.to_array(i) for i in stored if i.data_type == want)
        assert w.min() >= 1 and w.max() <= 255


def test_a_block_cannot_simulate_two_schemes():
    m, _ = residual((8, 32), scheme="u8u8")
    simulate_int8(m.blocks[0], "u8u8")  # idempotent
    with pytest.raises(ValueError, match="already simulates"):
        simulate_int8(m.blocks[0], "s8s8")


def test_the_label_says_what_ran():
    float_model, _ = residual((32, 32), int8=False)
    lat = time_latency(float_model, (3, 16, 16), runs=30, warmup=1,
                       runtime="onnxruntime-int8")
    assert "float: no int8 kernel" in lat.runtime and "QLinear" not in lat.runtime
    assert not any(f"int8 {n}" in lat.runtime for n in SCHEMES)
    m, calib = residual((8, 4), scheme="u8s8-rr")
    lat = time_latency(m, (3, 16, 16), runs=30, warmup=1, runtime="onnxruntime-int8",
                       calib=calib)
    assert "int8 u8s8-rr: QLinearAdd x2, QLinearConv x5" in lat.runtime
    data = int8_onnx_bytes(m, calib[:1], calib)
    assert describe_int8(data).startswith("int8 u8s8-rr")


def test_the_latency_table_times_int8_blocks_as_int8(tmp_path):
    from searchcomp.config import load_space
    from searchcomp.models import build_model, find_blocks, find_head, input_shape
    from searchcomp.predict.costs import ShapeCosts
    from searchcomp.predict.latency import LatencyTable
    from searchcomp.predict.layout import Layout
    from searchcomp.predict.store import ProfileStore

    p = tmp_path / "s.yaml"
    p.write_text("name: t\nmodel: {arch: resnet18, num_classes: 10, in_channels: 1, "
                 "image_size: 8}\ndata: {dataset: digits}\nblocks:\n  default: {conv: [keep], "
                 "prune: [0.0], bits: [32, 8]}\n  head: [keep]\nmeasure: {runs: 30, warmup: 1, "
                 f"runtime: onnxruntime-int8}}\nstudies_dir: {tmp_path}\n")
    space = load_space(p)
    base = build_model(space.model).eval()
    torch.manual_seed(0)
    for bn in (m for m in base.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # trained-like statistics (fresh ones fold into identical biases, which the ONNX
        # exporter shares between convs, and onnxruntime then cannot fuse the second)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.bias.data.uniform_(-0.2, 0.2)
    blocks = find_blocks(base, space)
    head, _ = find_head(base, space)
    costs = ShapeCosts(base, blocks, head, input_shape(space.model))
    store = ProfileStore(tmp_path / "p.json")
    calib = torch.randn(16, 1, 8, 8)
    table = LatencyTable(costs, base, space.measure, store, "u8s8-rr", calib)
    module, shape = table.module("layer1.0", ("keep", 0.0, 8))
    assert int8_scheme_of(module).name == "u8s8-rr"
    lat = time_latency(module, shape, runs=30, warmup=1, runtime="onnxruntime-int8",
                       calib=table.block_inputs("layer1.0", shape[0]))
    assert "int8 u8s8-rr: " in lat.runtime and "QLinearConv x2" in lat.runtime
    float_block, _ = table.module("layer1.0", ("keep", 0.0, 32))
    assert int8_scheme_of(float_block) is None
    layout = Layout.from_blocks(blocks[:1], ())
    assert table.measure(layout) > 0
    # the rows are the scheme's: a table of another scheme has none of its int8 rows
    again = LatencyTable(costs, base, space.measure, ProfileStore(tmp_path / "p.json"))
    assert again.scheme == "u8s8-rr" and not again.missing(layout)
    other = LatencyTable(costs, base, space.measure, ProfileStore(tmp_path / "p.json"), "u8u8")
    assert other.missing(layout)
    assert np.isfinite(again.block_ms("layer1.0", {"conv": "keep", "prune": 0.0, "bits": 8}))
