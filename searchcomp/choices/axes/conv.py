"""``conv``: what replaces a block's dense convs — ``keep``, or a registered layer choice
(:mod:`searchcomp.choices.layers`: separable, conv3d, meta, pyramid, plugins), initialised
from the (pruned) original layer."""

from __future__ import annotations

import math
from typing import Any

from searchcomp import choices
from searchcomp.choices.axes import Axis, BuildState, register
from searchcomp.config import KEEP, split_value
from searchcomp.errors import ChoiceError


@register
class Conv(Axis):
    name = "conv"
    neutral = KEEP
    order = 10
    phase = "replace"
    always = True
    description = "what replaces the block's dense convs: keep or a layer choice"

    def parse(self, value: Any) -> str:
        text = str(value)
        split_value(text)
        choices.parse_value(text, "conv")  # registered, with the right argument
        return text

    def code(self, value: Any) -> str:
        return choices.code(str(value), "conv")

    def legend(self) -> str:
        return choices.legend("conv")

    def label(self, value: Any) -> str:
        return str(value)

    def heat(self, value: Any) -> None:
        return None  # drawn by the kind of layer choice

    def anchors(self, allowed: dict[str, list]) -> list[dict[str, Any]]:
        """Only the swap the greedy rule makes (the choice declaring ``greedy_swap``), every
        block alike: what a practitioner tries first."""
        out = []
        for v in allowed.get(self.name, []):
            name, _arg = choices.parse_value(str(v), "conv")
            if getattr(choices.get(name, "conv"), "greedy_swap", False):
                out.append({self.name: v})
        return out

    def narrow(self, ctx: Any) -> None:
        for d in ctx.blocks:
            for value in ctx.values(d, self.name):
                why = reason(d, value, ctx.shrink)
                if why is not None:
                    ctx.drop(d, self.name, value, why)

    def apply(self, state: BuildState) -> None:
        from searchcomp.choices.probe import capture_inputs

        model = state.model
        targets = self.targets(state.recipe, state.blocks.values())
        if not targets:
            return
        inputs = capture_inputs(model, state.calib, list(targets)) if state.init else {}
        for layer_name, value in targets.items():
            layer = model.get_submodule(layer_name)
            name, arg = choices.parse_value(value, "conv")
            c = choices.get(name, "conv")
            why = c.reason(layer, arg)
            if why:
                raise ChoiceError(f"{value} cannot apply to {layer_name}"
                                  f"{' after pruning' if state.pruned else ''}: {why}")
            applied = c.apply(layer, arg, inputs.get(layer_name), init=state.init)
            model.set_submodule(layer_name, applied.module)
            if state.init:
                state.errors[layer_name] = float(applied.init_error)

    def targets(self, recipe: Any, blocks: Any) -> dict[str, str]:
        """Layer name -> conv value of every layer the recipe replaces."""
        out: dict[str, str] = {}
        for b in blocks:
            value = recipe.choice(b.name, self.name)
            if value != KEEP:
                for conv_name in b.convs:
                    out[conv_name] = value
        return out

    def restructure(self, arch: Any, recipe: Any, blocks: list[Any], head_name: str) -> None:
        for layer_name, value in self.targets(recipe, blocks).items():
            name, arg = choices.parse_value(value, "conv")
            arch.set_submodule(layer_name, choices.get(name, "conv").structure(
                arch.get_submodule(layer_name), arg))

    def effects(self, block: Any, model: Any = None) -> dict[str, str]:
        return {c: "replace" for c in block.convs}


def reason(block: Any, value: str, shrink: Any) -> str | None:
    """Why ``value`` cannot be ``block``'s conv choice (at any channel count the resizing
    axes may leave its target convs), or None."""
    name, arg = choices.parse_value(value, "conv")
    if name == KEEP:
        return None
    if not block.convs:
        return f"{value}: block {block.name} has no dense conv to replace"
    c = choices.get(name, "conv")
    multiple = math.lcm(shrink.round_to, c.channel_multiple(arg))
    for conv_name in block.convs:
        for probe, when in shrink.sizes(block, conv_name, multiple):
            why = c.reason(probe, arg)
            if why:
                return f"{value} cannot apply to {conv_name}{when}: {why}"
    return None
