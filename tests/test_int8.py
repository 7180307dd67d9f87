"""The onnxruntime-int8 runtime: int8 kernels where bits <= 8, the trial's own integer codes,
the fine-tune's simulation predicting the artifact, float blocks left float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from searchcomp.choices.actquant import (
    ActivationQuant,
    activation_quantizers,
    calibrate_activations,
    int8_units,
    simulate_int8,
    without_int8_simulation,
)
from searchcomp.choices.quant import integer_weights, materialize
from searchcomp.config.int8 import SCHEMES
from searchcomp.deploy.int8 import int8_kernels, int8_onnx_bytes, node_module
from searchcomp.deploy.onnx import session
from searchcomp.deploy.onnx_codes import int8_multiple
from searchcomp.deploy.packed import pack_state_dict
from searchcomp.deploy.schemes import kernel_exact

from .int8_models import residual

#: how close the int8 file is to the fake-quantized candidate it was made from: its largest
#: output difference is at most this share of the difference int8 activations make at all
#: (sim vs the same weights with float activations). What remains is onnxruntime's own
#: rounding, which the simulation leaves out: the int32 bias (on a grid of input scale x
#: weight scale) and ties in requantizing the int32 sums (measured: 0.05 to 0.16; 0.11 to
#: 0.30 under reduce_range, whose 7-bit weight scale makes the bias grid twice as coarse).
SIM_TOLERANCE = 0.4


def _run(data: bytes, x: torch.Tensor) -> torch.Tensor:
    sess = session(data, 1, int8=True)
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_int8_artifact_matches_the_fake_quantized_candidate(scheme):
    """Per scheme: the file computes what the fine-tune simulated, on any CPU whose kernel
    is exact for the scheme (where it is not, the chooser refuses the scheme: see
    tests/test_int8_schemes.py)."""
    if not kernel_exact(scheme):
        pytest.skip(f"this CPU's int8 kernel saturates for {scheme} (e.g. u8s8 on AVX2 "
                    "without VNNI): its files cannot match the simulation, and the chooser "
                    "refuses the scheme")
    m, calib = residual((8, 4), scheme=scheme)
    data = int8_onnx_bytes(m, calib[:1], calib)
    # int8 kernels really run: with uint8 activations every conv and add of both blocks,
    # not the stem or the head (onnxruntime's x86 build fuses int8 activations only in part:
    # the rest runs as float Conv between Quantize/Dequantize, which the label says)
    kernels = int8_kernels(data)
    if SCHEMES[scheme].activations == "u8":
        assert kernels == {"QLinearConv": 5, "QLinearAdd": 2}
    else:
        assert kernels.get("QLinearConv", 0) >= 1
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sim = m(x)
        float_acts = without_int8_simulation(m)(x)
    got = _run(data, x)
    effect = float((sim - float_acts).abs().max())
    assert effect > 1e-3 * float(sim.abs().max())  # the simulation does round activations
    assert float((got - sim).abs().max()) <= SIM_TOLERANCE * effect
    assert float((got - float_acts).abs().max()) > float((got - sim).abs().max())


def _folded_int8_weights(data: bytes) -> list[np.ndarray]:
    """The 4-D int8 weight initializers onnxruntime computes with, after its constant
    folding (which unpacks the packed codes)."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(opts.optimized_model_filepath).graph
    return [numpy_helper.to_array(i) for i in graph.initializer
            if i.data_type in _WEIGHT_TYPE.values() and len(i.dims) == 4]


#: the ONNX type of a scheme's weight initializers
_WEIGHT_TYPE = {"s8": onnx.TensorProto.INT8, "u8": onnx.TensorProto.UINT8}


@pytest.mark.parametrize("name", ["u8s8", "u8s8-rr", "u8u8"])
def test_a_4bit_block_keeps_its_codes_at_most_16_values_per_channel_and_stores_them_packed(name):
    scheme = SCHEMES[name]
    m, calib = residual((8, 4), scheme=name)
    data = int8_onnx_bytes(m, calib[:1], calib)
    weights = _folded_int8_weights(data)
    assert len(weights) == 5  # every conv of both blocks computes with int8 weights
    # the very codes the trial fine-tuned (BatchNorm gains are positive: no sign flip); the
    # 4-bit ones spread by 18 in int8 (9 under reduce_range: a finer int32 bias grid), the
    # uint8 weights of u8u8 shifted by 128
    assert scheme.multiple(4) == int8_multiple(4) // (2 if scheme.reduce_range else 1)
    four = []
    for block, multiple in ((m.blocks[0], 1), (m.blocks[1], scheme.multiple(4))):
        for layer in (block.conv1, block.conv2, getattr(block.downsample, "0", None)):
            if layer is None:
                continue
            q = integer_weights(layer)[0].numpy().astype(np.int64) * multiple
            if scheme.reduce_range:
                assert np.abs(q).max() <= 63  # 8-bit weights too: the kernel's 7-bit range
            q = q + scheme.weight_zero_point
            match = [w for w in weights if w.shape == q.shape and np.array_equal(w, q)]
            assert len(match) == 1
            if multiple > 1:
                four += match
    assert len(four) == 3  # conv1, conv2, downsample of the 4-bit block
    for w in four:
        for channel in w.reshape(w.shape[0], -1):
            assert len(np.unique(channel)) <= 16
    # in the file the 4-bit codes are bit-packed: no int8 tensor holds them as bytes
    stored = onnx.load_from_string(data).graph.initializer
    int8_4d = [numpy_helper.to_array(i) for i in stored
               if i.data_type == _WEIGHT_TYPE[scheme.weights] and len(i.dims) == 4]
    assert len(int8_4d) == 2  # the 8-bit block's two convs
    packed = sum(len(i.raw_data) for i in stored if i.data_type == onnx.TensorProto.UINT8
                 and len(i.dims) != 4)  # (u8u8's 8-bit weights are 4-D uint8)
    assert sum(w.size for w in four) // 2 <= packed < sum(w.size for w in four)


def test_16_and_32_bit_blocks_stay_float_with_integer_storage():
    m, calib = residual((16, 32))
    assert int8_units(m) == []
    data = int8_onnx_bytes(m, calib[:1], None)  # nothing to calibrate
    assert int8_kernels(data) == {}
    types = {i.data_type for i in onnx.load_from_string(data).graph.initializer}
    assert onnx.TensorProto.INT16 in types  # the 16-bit block's codes
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(_run(data, x), m(x), atol=1e-4, rtol=1e-4)


def test_int8_needs_calibration_images():
    m, _ = residual((8, 32))
    with pytest.raises(ValueError, match="calibration images"):
        int8_onnx_bytes(m, torch.zeros(1, 3, 16, 16), None)


def test_node_names_resolve_to_modules():
    modules = {"", "layer1", "layer1.0", "layer1.0.conv1", "layer1.0.conv1.dw",
               "layer2.0.downsample", "layer2.0.downsample.0", "layer2", "layer2.0",
               "a", "a.0", "a.0.0", "a.0.0.c.0"}
    assert node_module("/layer1/layer1.0/conv1/Conv", modules) == "layer1.0.conv1"
    assert node_module("/layer1/layer1.0/conv1/dw/Conv", modules) == "layer1.0.conv1.dw"
    assert node_module("/layer1/layer1.0/relu_1/Relu", modules) == "layer1.0"
    assert node_module("/layer2/layer2.0/downsample/downsample.0/Conv", modules) == \
        "layer2.0.downsample.0"
    assert node_module("/layer2/layer2.0/downsample/Conv", modules) == "layer2.0.downsample"
    assert node_module("/a/a.0/a.0.0/c.0/Conv", modules) == "a.0.0.c.0"
    assert node_module("/fc/Gemm", modules) == ""


def test_simulation_quantizes_what_onnxruntime_quantizes():
    m, calib = residual((8, 32))
    names = set(activation_quantizers(m))
    assert names == {"blocks.0.int8_input", "blocks.0.int8_output",
                     "blocks.0.conv1.int8_input", "blocks.0.conv2.int8_input",
                     "blocks.0.bn1.int8_output", "blocks.0.bn2.int8_output"}
    q = activation_quantizers(m)
    # bn1 feeds the ReLU: quantized after it (conv2's input), not before; bn2 feeds the add
    assert not bool(q["blocks.0.bn1.int8_output"].active)
    assert bool(q["blocks.0.bn2.int8_output"].active)
    assert float(q["blocks.0.conv2.int8_input"].lo) == 0.0  # a ReLU output
    for quantizer in q.values():
        assert float(quantizer.hi) > float(quantizer.lo)
    # the ranges are state: they travel with the weights, and leave the deployed model
    state = m.state_dict()
    assert "blocks.0.int8_output.hi" in state
    assert not activation_quantizers(materialize(m))
    assert not [k for k in pack_state_dict(m) if "int8_" in k]
    simulate_int8(m.blocks[0])  # idempotent
    assert set(activation_quantizers(m)) == names


def test_activation_quant_is_onnxruntime_uint8_rounding_with_straight_through_gradients():
    q = ActivationQuant()
    x = torch.linspace(-1, 3, 101, requires_grad=True)
    assert torch.equal(q(x), x)  # uncalibrated: identity
    q.observing = True
    q(x.detach())
    q.observing = False
    scale, zero = q.qparams()
    assert float(scale) == pytest.approx(4 / 255) and int(zero) == round(1 / (4 / 255))
    y = q(x)
    assert len(torch.unique(y.detach())) <= 101 and (y - x).abs().max() <= float(scale) / 2 + 1e-6
    y.sum().backward()
    assert torch.all(x.grad == 1)


def test_calibration_follows_the_weights():
    m, calib = residual((8, 4))
    before = float(activation_quantizers(m)["blocks.1.int8_output"].hi)
    with torch.no_grad():
        m.blocks[1].bn2.weight.mul_(3)
    calibrate_activations(m, calib)
    assert float(activation_quantizers(m)["blocks.1.int8_output"].hi) > before
    m.blocks[1].train()
    calibrate_activations(m, calib)
    assert m.blocks[1].training  # the mode is restored


def test_materialized_copy_is_independent_of_the_simulation():
    m, calib = residual((8, 4))
    plain = without_int8_simulation(m)
    assert not activation_quantizers(plain) and activation_quantizers(m)
    assert isinstance(plain.blocks[0], nn.Module)
    x = calib[:4]
    with torch.no_grad():
        assert not torch.equal(plain(x), m(x))


INT8_SPACE = """\
name: tiny-int8
model: {{arch: resnet18, num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 400, val_size: 400, test_size: 300, batch_size: 50}}
# 5 epochs: 0.92-0.93 validation accuracy in fp32 and bf16, 1 or 2 threads; 2 epochs gave
# 0.24-0.67 by precision and threads (measured on an AMD EPYC, 2026-12-04), too weak for
# the accuracy checks below, for the same ~25 s
base: {{source: train, epochs: 5}}
blocks:
  default: {{conv: [keep, separable], prune: [0.0], bits: [32, 8, 4]}}
  head: [keep]
finetune: {{steps: 6}}
measure: {{runs: 30, warmup: 1, runtime: onnxruntime-int8}}
search: {{trials: 4, seed_configs: [{{bits: 8}}, {{bits: 4}}]}}
studies_dir: {studies}
"""


def _tagged(trials: dict, tag: str) -> int:
    """The number of the trial tagged ``tag``."""
    return next(n for n, t in trials.items() if t.user_attrs.get("tag") == tag)


@pytest.fixture(scope="module")
def int8_study(tmp_path_factory):
    """A finished tiny search in the onnxruntime-int8 runtime."""
    from searchcomp.config import load_space
    from searchcomp.search.api import run_search
    from searchcomp.search.study import open_study

    root = tmp_path_factory.mktemp("int8")
    p = root / "int8.yaml"
    p.write_text(INT8_SPACE.format(studies=root / "studies"))
    space = load_space(p)
    run_search(space, quiet=True, log=lambda m: None)
    study = open_study(space, load_only=True)
    trials = {t.number: t for t in study.get_trials()}
    return space, root, trials, {}, study.user_attrs["int8_scheme"]


@pytest.mark.slow
def test_a_search_in_the_int8_runtime_records_it_and_exports_what_it_measured(int8_study):
    from searchcomp.deploy.cpu import cpu_features, features_label
    from searchcomp.deploy.load import load
    from searchcomp.results.export import export_trial

    space, root, trials, cards, record = int8_study
    # the scheme was chosen by measurement on this CPU: every scheme timed and scored
    assert [r["scheme"] for r in record["rows"]] == list(SCHEMES)
    chosen = next(r for r in record["rows"] if r["scheme"] == record["scheme"])
    assert chosen["accepted"] and chosen["exact"] and record["chosen_by"] == "measurement"
    done = [t for t in trials.values() if t.state.name == "COMPLETE"]
    assert len(done) == 4
    for t in done:
        a = t.user_attrs
        assert a["runtime"] == "onnxruntime-int8" and a["int8_scheme"] == record["scheme"]
        # the label says what ran: int8 kernels of the scheme, or none for an all-float file
        if any(b <= 8 for blk in a["recipe"]["blocks"].values() for k, b in blk.items()
               if k == "bits"):
            assert f"int8 {record['scheme']}: " in a["latency_runtime"]
            assert "QLinearConv" in a["latency_runtime"]
        else:
            assert "float: no int8 kernel" in a["latency_runtime"]
        assert a["latency_runtime"].endswith(features_label())
        assert a["cpu_features"] == (list(cpu_features()) if cpu_features() is not None
                                     else None)
    # the anchors (the space's seeds too): every block at 8 bits, every block at 4 bits
    for number in (_tagged(trials, "anchor bits=8"), _tagged(trials, "anchor bits=4")):
        a = trials[number].user_attrs
        card = export_trial(space, number, root / f"exp{number}", log=lambda m: None)
        cards[number] = card
        assert card["int8_scheme"]["scheme"] == record["scheme"]
        assert card["int8_scheme"]["record"]["rows"] == record["rows"]
        assert f"int8 scheme: {record['reason']}" in (root / f"exp{number}" /
                                                       "card.md").read_text()
        assert card["format"] == "onnx-int8" and card["same_artifact_as_search"]
        e = card["exported"]
        # size exact: the file is the bytes the trial's size_mib counted
        assert e["file_bytes"] == a["size_mib"] * 2**20 and card["size_mib_agreement"] == 0
        data = (root / f"exp{number}" / "model.int8.onnx").read_bytes()
        assert int8_kernels(data)["QLinearConv"] >= 16  # every block's convs
        # the trial's simulated accuracy predicts the file's on the same split
        assert abs(card["accuracy_gap"]) <= 0.02, card["accuracy_gap_note"]
        assert card["base"]["file_mib"] > 3 * e["file_mib"]
        with torch.no_grad():
            assert load(root / f"exp{number}")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_the_card_accuracy_comes_from_the_file(int8_study, monkeypatch):
    """Break the int8 file as it is written (the float stem conv's weights zeroed): the
    card's accuracies, measured by running the file, fall, and the gap to the trial is
    flagged."""
    import searchcomp.deploy.formats as formats
    from searchcomp.results.export import export_trial

    space, root, trials, cards, _ = int8_study
    n8 = _tagged(trials, "anchor bits=8")
    good = cards.get(n8) or export_trial(space, n8, root / "good", log=lambda m: None)
    serialize = formats.serialize

    def broken(model, fmt, *args, **kwargs):
        data = serialize(model, fmt, *args, **kwargs)
        if fmt != "onnx-int8":
            return data
        proto = onnx.load_from_string(data)
        stem = [i for i in proto.graph.initializer
                if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4]
        assert stem  # the stem conv stays float in the int8 file
        for init in stem:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0, init.name))
        return proto.SerializeToString()

    monkeypatch.setattr(formats, "serialize", broken)
    card = export_trial(space, n8, root / "broken", log=lambda m: None)
    for split in ("test_accuracy", "val_accuracy"):
        # chance is 0.1; the base scores about 0.9 (see INT8_SPACE), and the good file keeps
        # what the trial measured (the other test holds the gap <= 2 pt)
        assert card["exported"][split] < 0.2 and card["base"][split] < 0.2  # written alike
        assert good["exported"][split] >= card["exported"][split] + 0.4
        assert good["base"][split] >= card["base"][split] + 0.15
    assert card["accuracy_gap_flag"] and "more than 0.5 pt" in card["accuracy_gap_note"]
    assert "**Accuracy gap:**" in (root / "broken" / "card.md").read_text()
