import pytest
import torch
import torchvision
from torch import nn

from searchcomp import choices
from searchcomp import measure as metrics
from searchcomp.choices.prune import prune_blocks
from searchcomp.choices.quant import materialize, quantize_module
from searchcomp.deploy.packed import (
    load_packed,
    pack_state_dict,
    save_packed,
    unpack_state_dict,
)

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
    assert metrics.count_params(m) == 11181642
    quantize_module(m, 8)  # the float original is counted once, scales are not parameters
    assert metrics.count_params(m) == 11181642


def test_size_matches_file_float(tmp_path):
    m = resnet18()
    nbytes = save_packed(m, tmp_path / "f.pt")
    assert metrics.compute_size_mib(m) == pytest.approx(nbytes / MIB, rel=0.02)
    assert metrics.compute_size_mib(m) == pytest.approx(11181642 * 4 / MIB, rel=0.01)


def test_size_matches_file_quantized(tmp_path):
    m = quantized_resnet18()
    nbytes = save_packed(m, tmp_path / "q.pt")
    size = metrics.compute_size_mib(m)
    assert size == pytest.approx(nbytes / MIB, rel=0.02)
    # layer4 (~8.4M weights) at 4 bits, layer1-3 (~2.8M) at 8 bits: roughly 6.5x smaller
    ratio = metrics.compute_size_mib(resnet18()) / size
    assert 5.5 < ratio < 7.5


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_size_matches_file_for_a_tiny_compressed_model(tmp_path, bits):
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
    assert metrics.compute_size_mib(m) == pytest.approx(nbytes / MIB, rel=0.02)


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
    f = metrics.count_flops(m, (3, 32, 32))
    assert f > 0
    prune_blocks(m, {"layer1.0": 0.5, "layer3.1": 0.5}, torch.randn(1, 3, 32, 32))
    assert 0 < metrics.count_flops(m, (3, 32, 32)) < f


def test_flops_convention_two_per_mac():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    macs = 4 * 3 * 9 * 5 * 5
    assert metrics.count_flops(conv, (3, 5, 5)) == 2 * macs
    q = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    quantize_module(q, 4)
    assert metrics.count_flops(q, (3, 5, 5)) == 2 * macs  # fake quant ops are not counted


@pytest.mark.parametrize("runtime,word", [("torch", "torch"), ("onnxruntime", "onnxruntime")])
def test_latency(runtime, word):
    m = TinyCNN().eval()
    quantize_module(m, 8)
    threads = torch.get_num_threads()
    r = metrics.time_latency(m, (3, 16, 16), runs=10, warmup=2, runtime=runtime, threads=1)
    assert r.runs >= 30 and r.threads == 1 and r.batch_size == 1
    assert r.median_ms > 0 and r.p90_ms >= r.median_ms
    assert r.runtime.startswith(word) and "1 thread" in r.runtime
    assert torch.get_num_threads() == threads


def test_latency_bad_args():
    with pytest.raises(ValueError, match="runtime"):
        metrics.time_latency(TinyCNN(), (3, 8, 8), runtime="tvm")
    with pytest.raises(ValueError, match="batch_size"):
        metrics.time_latency(TinyCNN(), (3, 8, 8), batch_size=0)


def test_measure():
    m = TinyCNN().eval()
    res = metrics.measure(m, (3, 16, 16), batch_size=2)
    assert res.params == metrics.count_params(m)
    assert res.size_mib == metrics.compute_size_mib(m) and res.flops == metrics.count_flops(m, (3, 16, 16))
    assert res.latency_ms > 0 and res.latency_runtime.startswith("torch")
