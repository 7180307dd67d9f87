import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from searchcomp.choices.quant import (
    QuantizeWeight,
    integer_weights,
    materialize,
    quantize_module,
    quantized_tensors,
    weight_bits,
)


class WithCustom(nn.Module):
    """A custom layer that opts its tensors in through ``quant_weights``."""

    quant_weights = ("kernel",)

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(6, 4))
        self.gain = nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.kernel.t()) * self.gain


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_distinct_values_per_channel(bits):
    m = tiny()
    assert quantize_module(m, bits) == 3
    for mod in (m[0], m[3], m[7]):
        w = mod.weight.detach()
        for c in range(w.shape[0]):
            assert torch.unique(w[c]).numel() <= 2**bits
        q, scale = integer_weights(mod, "weight")
        qmax = 2 ** (bits - 1) - 1
        assert q.abs().max() <= qmax and q.dtype == torch.int8
        view = (-1,) + (1,) * (w.dim() - 1)
        assert torch.equal(q.float() * scale.reshape(view), w)  # exactly the forward weight


def test_two_bits_is_ternary():
    m = tiny()
    quantize_module(m, 2)
    q, _ = integer_weights(m[0])
    assert set(q.unique().tolist()) <= {-1, 0, 1}


def test_ste_gradient_reaches_original():
    m = tiny()
    quantize_module(m, 4)
    x = torch.randn(2, 3, 8, 8)
    m(x).square().sum().backward()
    g_orig = m[3].parametrizations.weight.original.grad
    assert g_orig is not None and g_orig.abs().sum() > 0
    # gradient w.r.t. the quantized weight itself, with the same forward
    mat = materialize(m)
    mat.zero_grad()
    mat(x).square().sum().backward()
    assert torch.allclose(g_orig, mat[3].weight.grad, atol=1e-6)


@pytest.mark.parametrize("bits", [0, 1, 3, 5, 7, 12, 64, 8.0, "8", True])
def test_invalid_bits_raise(bits):
    with pytest.raises(ValueError, match="bit"):
        QuantizeWeight(bits)
    with pytest.raises(ValueError, match="bit"):
        quantize_module(tiny(), bits)


def test_32_is_float():
    with pytest.raises(ValueError, match="float"):
        QuantizeWeight(32)
    m = tiny()
    assert quantize_module(m, 32) == 0
    assert quantized_tensors(m) == [] and weight_bits(m[0]) == 32


def test_idempotent_and_width_conflict():
    m = tiny()
    assert quantize_module(m[0], 8) == 1
    assert quantize_module(m, 8) == 3  # the already quantized conv is kept, not stacked
    assert len(m[0].parametrizations.weight) == 1
    with pytest.raises(ValueError, match="already quantized to 8"):
        quantize_module(m, 4)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_module(m, 32)
    assert quantized_tensors(m) == [("0", "weight", 8), ("3", "weight", 8), ("7", "weight", 8)]
    assert weight_bits(m[3]) == 8 and weight_bits(m[3], "bias") == 32


def test_quant_weights_attribute_and_16_bits():
    torch.manual_seed(0)
    m = nn.Sequential(WithCustom(), nn.Linear(6, 2))
    assert quantize_module(m, 16) == 2
    assert weight_bits(m[0], "kernel") == 16 and weight_bits(m[0], "gain") == 32
    q, scale = integer_weights(m[0], "kernel")
    assert q.dtype == torch.int16 and scale.shape == (6,)
    assert torch.equal(q.float() * scale[:, None], m[0].kernel)


def test_missing_declared_tensor_raises():
    class Bad(nn.Module):
        quant_weights = ("nope",)

    with pytest.raises(ValueError, match="nope"):
        quantize_module(Bad(), 8)


def test_materialize_equal_outputs_and_original_intact():
    m = tiny()
    quantize_module(m, 4)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
        mat = materialize(m)
        assert not any(parametrize.is_parametrized(mod) for mod in mat.modules())
        assert torch.equal(mat(x), ref)
        assert type(mat[0]) is nn.Conv2d
        # torch shares the generated Parametrized class between deep copies; the original
        # must survive removing the copy's parametrizations
        assert torch.equal(m(x), ref) and parametrize.is_parametrized(m[0])
