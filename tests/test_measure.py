import pytest
import torch
import torchvision
from torch import nn

from searchcomp import choices
from searchcomp.choices.prune import prune_blocks
from searchcomp.choices.quant import materialize, quantize_module
from searchcomp.deploy.cpu import cpu_features, features_label
from searchcomp.deploy.formats import FORMATS, write_artifact
from searchcomp.deploy.packed import (
    load_packed,
    pack_state_dict,
    save_packed,
    unpack_state_dict,
)
from searchcomp.deploy.runtime import RUNTIMES, runtime_of_format
from searchcomp.measure import (
    compute_size_mib,
    count_flops,
    count_params,
    measure,
    time_artifact,
    time_latency,
)

from .int8_models import residual

MIB = 2**20


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def quantized_resnet18() -> nn.Module:
    m = resnet18()
    for name in ("layer1", "layer2", "layer3"):
        quantize_module(m.get_submodule(name), 8)
    quantize_module(m.layer4, 4)
    return m


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean((2, 3)))


def test_count_params_resnet18():
    m = resnet18()
    assert count_params(m) == 11181642
    quantize_module(m, 8)  # the float original is counted once, scales are not parameters
    assert count_params(m) == 11181642


def test_size_is_the_state_dict_file_float_and_quantized(tmp_path):
    m = resnet18()
    nbytes = save_packed(m, tmp_path / "f.pt")
    assert compute_size_mib(m) * MIB == nbytes == (tmp_path / "f.pt").stat().st_size
    assert compute_size_mib(m) == pytest.approx(11181642 * 4 / MIB, rel=0.01)
    q = quantized_resnet18()
    assert compute_size_mib(q) * MIB == save_packed(q, tmp_path / "q.pt")
    # layer4 (~8.4M weights) at 4 bits, layer1-3 (~2.8M) at 8 bits: roughly 6.5x smaller
    assert 5.5 < compute_size_mib(m) / compute_size_mib(q) < 7.5


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_size_is_the_file_for_a_tiny_compressed_model(tmp_path, bits):
    """Where the file format's per-tensor overhead matters: a few hundred KiB in all."""
    get = choices.get

    m = resnet18()
    x = torch.randn(4, 3, 16, 16)
    for blk in (m.layer1, m.layer2, m.layer3, m.layer4):
        for b in blk:
            for name in ("conv1", "conv2"):
                setattr(b, name, get("separable").apply(getattr(b, name), None, None).module)
            quantize_module(b, bits)
    m.fc = get("meta", "head").apply(m.fc, 2, None).module
    assert m(x).shape == (4, 10)
    nbytes = save_packed(m, tmp_path / "t.pt")
    assert nbytes < 2 * MIB
    assert compute_size_mib(m) * MIB == nbytes


def int8_residual() -> tuple[nn.Module, torch.Tensor]:
    """A tiny residual net with block 0 at 8 bits and block 1 at 4 bits, both simulating
    int8; and its calibration images."""
    return residual((8, 4))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_size_is_the_byte_count_of_the_exported_file(tmp_path, fmt):
    """For every format: size_mib of the runtime that ships it is the file, byte for byte.

    TorchScript is the exception (and no search runtime): its archive names each compiled
    class with a counter global to the process (``___torch_mangle_35``), so the same model
    serialized again later in a process is a few bytes per class longer."""
    m, calib = int8_residual()
    runtime = runtime_of_format(fmt).name
    info = {"format": fmt, "file": FORMATS[fmt], "input_shape": [3, 16, 16]}
    size = compute_size_mib(m, runtime, (3, 16, 16), calib) * MIB
    path = write_artifact(m, info, tmp_path, calib=calib)
    if fmt == "torchscript":
        assert abs(path.stat().st_size / size - 1) < 0.05
    else:
        assert size == path.stat().st_size


def test_pack_unpack_round_trip_exact(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Conv2d(5, 7, 1),
                      nn.Conv2d(7, 3, 3), nn.Conv2d(3, 3, 1), nn.Flatten(), nn.LazyLinear(9))
    m(torch.randn(1, 3, 12, 12))  # materialize the lazy layer
    for layer, bits in zip((m[0], m[2], m[3], m[4]), (2, 4, 6, 16), strict=True):  # odd sizes: padding
        quantize_module(layer, bits)
    quantize_module(m[6], 8)
    packed = pack_state_dict(m)
    assert packed["0.weight"].dtype == torch.uint8
    assert packed["0.weight"].numel() == -(-5 * 3 * 9 // 4)  # four 2-bit codes per byte
    assert packed["3.weight"].numel() == -(-3 * 7 * 9 // 4) * 3  # 6-bit: 4 codes in 3 bytes
    assert packed["4.weight"].dtype == torch.int16 and packed["6.weight"].dtype == torch.int8
    assert packed["1.num_batches_tracked"].dtype == torch.int64
    mat = materialize(m)
    ref = mat.state_dict()
    save_packed(m, tmp_path / "x.pt")
    for sd in (unpack_state_dict(packed), load_packed(tmp_path / "x.pt")):
        assert sd.keys() == ref.keys()
        for k in ref:
            assert torch.equal(sd[k], ref[k]), k
        fresh = materialize(m)
        fresh.load_state_dict(sd, strict=True)


def test_flops_and_pruning():
    m = resnet18()
    f = count_flops(m, (3, 32, 32))
    assert f > 0
    prune_blocks(m, {"layer1.0": 0.5, "layer3.1": 0.5}, torch.randn(1, 3, 32, 32))
    assert 0 < count_flops(m, (3, 32, 32)) < f


def test_flops_convention_two_per_mac():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    macs = 4 * 3 * 9 * 5 * 5
    assert count_flops(conv, (3, 5, 5)) == 2 * macs
    q = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    quantize_module(q, 4)
    assert count_flops(q, (3, 5, 5)) == 2 * macs  # fake quant ops are not counted


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_latency_records_the_runtime_and_the_cpu_features(runtime):
    m, calib = int8_residual()
    threads = torch.get_num_threads()
    r = time_latency(m, (3, 16, 16), runs=10, warmup=2, runtime=runtime, threads=1,
                     calib=calib)
    assert r.runs >= 30 and r.threads == 1 and r.batch_size == 1
    assert r.median_ms > 0 and r.p90_ms >= r.median_ms
    assert r.runtime.startswith("onnxruntime" if "onnx" in runtime else "torch")
    assert "1 thread" in r.runtime and r.runtime.endswith(features_label())
    assert r.cpu_features == cpu_features()
    assert ("int8" in r.runtime) == (runtime == "onnxruntime-int8")
    assert torch.get_num_threads() == threads


def test_cpu_features_are_read_from_the_machine():
    feats = cpu_features()
    if feats is None:
        pytest.skip("this platform does not expose CPU flags")
    import pathlib

    text = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() \
        else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    if flags:
        assert set(feats) == {f for f in ("avx2", "avx_vnni", "avx512_vnni", "amx_int8",
                                          "amx_bf16", "amx_tile") if f in flags}
    assert features_label(("avx2",)) == "cpu avx2 (no VNNI, no AMX)"
    assert features_label(("avx2", "avx512_vnni", "amx_int8")).startswith(
        "cpu avx2 avx512_vnni amx_int8")
    assert features_label(()) == "cpu without avx2 (no VNNI, no AMX)"


def test_time_artifact_runs_the_file_in_its_runtime(tmp_path):
    m, calib = int8_residual()
    for fmt in ("state_dict", "onnx-int8"):
        info = {"format": fmt, "file": FORMATS[fmt], "input_shape": [3, 16, 16],
                "model": {}, "blocks": [], "head_name": "head"}
        folder = tmp_path / fmt
        folder.mkdir()
        write_artifact(m, info, folder, calib=calib)
        loaded = m if fmt == "state_dict" else None  # no recipe to rebuild this tiny model
        r = time_artifact(folder, threads=1, runs=30, warmup=1, loaded=loaded)
        assert r.median_ms > 0 and r.cpu_features == cpu_features()
        assert ("int8" in r.runtime) == (fmt == "onnx-int8")


def test_latency_bad_args():
    with pytest.raises(ValueError, match="runtime"):
        time_latency(TinyCNN(), (3, 8, 8), runtime="tvm")
    with pytest.raises(ValueError, match="batch_size"):
        time_latency(TinyCNN(), (3, 8, 8), batch_size=0)
    m, _ = int8_residual()
    with pytest.raises(ValueError, match="calibration images"):
        time_latency(m, (3, 16, 16), runtime="onnxruntime-int8")


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime-int8"])
def test_measure(runtime):
    m, calib = int8_residual()
    res = measure(m, (3, 16, 16), batch_size=2, runtime=runtime, calib=calib)
    assert res.params == count_params(m) and res.flops == count_flops(m, (3, 16, 16))
    assert res.size_mib == compute_size_mib(m, runtime, (3, 16, 16), calib)
    assert res.latency_ms > 0 and res.runtime == runtime
    assert res.cpu_features == cpu_features()
    assert res.latency_runtime.startswith("onnxruntime" if "onnx" in runtime else "torch")
