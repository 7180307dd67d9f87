"""The int8 schemes a space can name (``measure.int8_scheme``): integer types of onnxruntime's
static QDQ quantization. Which one is fast *and* right depends on the CPU's kernels (MLAS):

* ``u8s8``: uint8 activations, int8 weights. The fast path on CPUs with AVX512-VNNI / AVX-VNNI
  (``vpdpbusd`` sums u8 x s8 products in int32). On AVX2-only CPUs the kernel multiplies with
  ``vpmaddubsw``, which adds pairs of u8 x s8 products in **int16 with saturation**: two
  products of 255 x 127 overflow it, and the file computes something else than the model.
* ``u8s8-rr``: the same with ``reduce_range``: weights within +-63 (7 bits), so a pair sums to
  at most 2 x 255 x 63 = 32130 < 32767: exact on every x86 kernel. An ``8``-bit block is then
  fine-tuned with 7-bit weights, so the simulation matches the file.
* ``u8u8``: uint8 activations and uint8 weights (zero point 128: the same symmetric codes
  shifted by 128).
* ``s8s8``: int8 activations (asymmetric, zero point in -128..127) and int8 weights: what ARM
  CPUs prefer; on x86 onnxruntime converts it to u8s8.

Weights are always per output channel and symmetric; a trial's own codes are kept.
Plain data (no torch, no onnxruntime): the simulation (:mod:`searchcomp.choices.actquant`),
the exporter (:mod:`searchcomp.deploy.int8`) and the chooser
(:mod:`searchcomp.deploy.schemes`) all read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Int8Scheme:
    """Integer types of one static int8 quantization (see the module docstring)."""

    name: str
    #: activation type: ``u8`` (0..255) or ``s8`` (-128..127), asymmetric, per tensor
    activations: str
    #: weight type: ``s8`` (symmetric, zero point 0) or ``u8`` (zero point 128)
    weights: str
    #: weights within +-63 (7 bits): no int16 saturation in AVX2's u8 x s8 kernel
    reduce_range: bool
    description: str

    @property
    def act_qmin(self) -> int:
        """Smallest activation code."""
        return 0 if self.activations == "u8" else -128

    @property
    def act_qmax(self) -> int:
        """Largest activation code."""
        return 255 if self.activations == "u8" else 127

    @property
    def weight_qmax(self) -> int:
        """The largest weight code magnitude the int8 kernel gets (symmetric codes)."""
        return 63 if self.reduce_range else 127

    def weight_levels(self, bits: int) -> int:
        """The largest code of a ``bits``-bit weight in a block running this scheme: the
        width's own ``2**(bits-1) - 1``, capped by the kernel's range (8 bits under
        ``reduce_range``: 63)."""
        return min(2 ** (bits - 1) - 1, self.weight_qmax)

    def multiple(self, bits: int) -> int:
        """The factor ``bits``-bit codes are spread by in the int8 weight: the largest that
        keeps them within :attr:`weight_qmax` (8 bits: 1; 4 bits: 18, or 9 under
        ``reduce_range``). A finer spread gives onnxruntime's int32 bias (quantized at input
        scale x weight scale) a finer grid."""
        return max(1, self.weight_qmax // self.weight_levels(bits))

    @property
    def weight_zero_point(self) -> int:
        """Zero point of the weights (128 for ``u8``: the signed codes shifted)."""
        return 128 if self.weights == "u8" else 0


SCHEMES: dict[str, Int8Scheme] = {s.name: s for s in (
    Int8Scheme("u8s8", "u8", "s8", False,
               "uint8 activations, int8 weights (fast with VNNI; AVX2 kernels may saturate)"),
    Int8Scheme("u8s8-rr", "u8", "s8", True,
               "uint8 activations, int8 weights within +-63 (reduce_range: exact on AVX2)"),
    Int8Scheme("u8u8", "u8", "u8", False, "uint8 activations, uint8 weights (zero point 128)"),
    Int8Scheme("s8s8", "s8", "s8", False, "int8 activations, int8 weights"),
)}
#: what studies made before schemes were chosen used
DEFAULT_SCHEME = "u8s8"


def get_scheme(name: str | Int8Scheme | None) -> Int8Scheme:
    """The scheme called ``name`` (None: :data:`DEFAULT_SCHEME`)."""
    if isinstance(name, Int8Scheme):
        return name
    try:
        return SCHEMES[name or DEFAULT_SCHEME]
    except KeyError:
        raise ValueError(f"unknown int8 scheme {name!r}; known: {', '.join(SCHEMES)}") from None
