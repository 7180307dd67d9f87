"""``bits``: the weights' bit width of a block (32 = float), quantized per output channel
with a straight-through estimator so it fine-tunes (:mod:`searchcomp.choices.quant`)."""

from __future__ import annotations

import math
from typing import Any

from searchcomp.choices.axes import Axis, BuildState, register
from searchcomp.config import FLOAT_BITS, SUPPORTED_BITS

#: blocks at this width or less run int8 kernels in the ``onnxruntime-int8`` runtime
INT8_BITS = 8
#: the summary characters of the bit widths (``.`` = float)
CODES = {FLOAT_BITS: ".", 16: "h", 8: "8", 6: "6", 4: "4", 2: "2"}
#: layer kinds whose ``weight`` the quantization reaches
WEIGHTED = ("Conv2d", "Conv3d", "Linear")


@register
class Bits(Axis):
    name = "bits"
    neutral = FLOAT_BITS
    order = 30
    phase = "weights"
    always = True
    description = "weight bit width: 2, 4, 6, 8, 16 or 32 (= float)"
    color = "#6a3d9a"
    heat_max = 4.0

    def parse(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                int(value) != value or int(value) not in SUPPORTED_BITS:
            raise ValueError(f"bit width {value} is not supported; use one of "
                             f"{', '.join(map(str, SUPPORTED_BITS))} (32 = float)")
        return int(value)

    def code(self, value: Any) -> str:
        return CODES[int(value)]

    def legend(self) -> str:
        return ". float, h 16, 8/6/4/2"

    def label(self, value: Any) -> str:
        return f"{int(value)} bit"

    def heat(self, value: Any) -> float:
        return math.log2(FLOAT_BITS / int(value))

    def apply(self, state: BuildState) -> None:
        from searchcomp.choices.actquant import calibrate_activations, simulate_int8
        from searchcomp.choices.probe import ERROR_IMAGES, block_errors, block_io
        from searchcomp.choices.quant import quantize_module

        model, recipe, calib = state.model, state.recipe, state.calib
        quantized = [b for b in state.blocks if int(recipe.choice(b, self.name)) != FLOAT_BITS]
        if not quantized:
            return
        before = block_io(model, calib[:ERROR_IMAGES], quantized) if state.init else {}
        for b in quantized:
            quantize_module(model.get_submodule(b), int(recipe.choice(b, self.name)),
                            clip="mse" if state.init else "max")
        state.errors.update(block_errors(model, before, self.name))
        units = [b for b in quantized if int(recipe.choice(b, self.name)) <= INT8_BITS]
        if state.int8 and units:
            before = block_io(model, calib[:ERROR_IMAGES], units) if state.init else {}
            scheme = None if state.int8 is True else state.int8
            for b in units:
                simulate_int8(model.get_submodule(b), scheme)
            if state.init:
                calibrate_activations(model, calib)
                state.errors.update(block_errors(model, before, "int8"))

    def effects(self, block: Any, model: Any = None) -> dict[str, str]:
        if model is None:
            return {}
        module = model.get_submodule(block.name)
        return {f"{block.name}.{n}" if n else block.name: "bits"
                for n, m in module.named_modules() if type(m).__name__ in WEIGHTED}

    def latency_key(self, value: Any, runtime: str) -> Any:
        # the float runtime runs quantized weights as float: the same kernels at any width
        return self.neutral if runtime == "torch" else value
