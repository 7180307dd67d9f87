"""``prune``: the share of a block's filters removed (structured pruning with torch-pruning,
residual-safe: only convs whose pruning changes no other layer's outputs, see
:mod:`searchcomp.choices.prune`)."""

from __future__ import annotations

import math
from typing import Any

from searchcomp import choices
from searchcomp.choices.axes import Axis, BuildState, Resizer, register
from searchcomp.config import KEEP


def prune_code(ratio: float) -> str:
    """The summary digit of a prune ratio: tenths of the filters removed, rounded half up
    (``round`` rounds half to even: 0.25 would show 2 and 0.75 8), at most 9; ``.`` for 0."""
    if not ratio:
        return "."
    return str(min(9, math.floor(10 * float(ratio) + 0.5 + 1e-9)))


@register
class Prune(Axis):
    name = "prune"
    neutral = 0.0
    order = 20
    phase = "resize"
    resizes = True
    always = True
    description = "share of the block's internal filters to remove, in [0, 1)"
    color = "#d6404e"
    heat_max = 0.9

    def parse(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"prune ratio {value!r} must be a number in [0, 1)")
        if not 0.0 <= value < 1.0:
            raise ValueError(f"prune ratio {value} must be in [0, 1): the share of a block's "
                             "filters to remove")
        return float(value)

    def code(self, value: Any) -> str:
        return prune_code(value)

    def legend(self) -> str:
        return "digit = tenths of the filters removed"

    def label(self, value: Any) -> str:
        return f"prune {float(value):g}"

    def heat(self, value: Any) -> float:
        return float(value)

    # -- which blocks can be pruned ----------------------------------------------------
    def narrow(self, ctx: Any) -> None:
        from searchcomp.choices.coupling import prune_map

        wanted = [d for d in ctx.blocks if any(ctx.values(d, self.name))]
        if not wanted:
            return
        try:
            pmap, why, per = prune_map(ctx.model, {d.name: ctx.model.get_submodule(d.name)
                                                   for d in wanted}, ctx.example)
        except Exception as e:  # torch-pruning cannot trace this graph: no pruning here
            pmap, why, per = {}, {d.name: untraceable(e) for d in wanted}, {}
        for d in wanted:
            d.pruning = {k: tuple(v) for k, v in pmap.get(d.name, {}).items()}
            if not d.pruning:
                for r in ctx.values(d, self.name):
                    if r:
                        ctx.drop(d, self.name, r, why.get(d.name) or "nothing to prune")
                continue
            ratios = tuple(r for r in ctx.values(d, self.name) if r)
            for conv, consumers in d.pruning.items():
                ctx.shrink.add(d, conv, "out", 1, ratios, None)
                for c in consumers:
                    ctx.shrink.add(d, c, "in", per.get(d.name, {}).get(c), ratios, conv)

    # -- build ---------------------------------------------------------------------------
    def apply(self, state: BuildState) -> None:
        from searchcomp.choices.probe import ERROR_IMAGES, block_io, prune_errors
        from searchcomp.choices.prune import prune_blocks

        recipe, blocks = state.recipe, state.blocks
        ratios = {b: float(recipe.choice(b, self.name)) for b in blocks
                  if recipe.choice(b, self.name)}
        if not ratios:
            return
        before = block_io(state.model, state.calib[:ERROR_IMAGES], list(ratios))
        round_to = {b: multiple(blocks[b], recipe, list(blocks.values()), state.head_name,
                                state.round_to) for b in ratios}
        removed: dict[str, dict[str, Any]] = {}
        state.pruned.update(prune_blocks(state.model, ratios, state.calib[:1],
                                         criterion=state.prune_criterion,
                                         grad_batches=state.grad_batches, round_to=round_to,
                                         removed=removed))
        state.errors.update(prune_errors(state.model, before, removed))

    # -- shapes only ---------------------------------------------------------------------
    def resizers(self, model: Any, blocks: list[Any], example: Any, head_name: str
                 ) -> list[Resizer]:
        from searchcomp.choices.coupling import prune_groups

        prunable = [b for b in blocks if any(b.choices.get(self.name) or ())]
        if not prunable:
            return []
        groups = prune_groups(model, {b.name: model.get_submodule(b.name) for b in prunable},
                              example)
        owner = {conv: b.name for b in blocks for conv in b.convs}
        out = []
        for b in prunable:
            touched = set(b.pruning) | {c for cs in b.pruning.values() for c in cs}
            depends = {(b.name, "conv")} | {(owner[t], "conv") for t in touched if t in owner}
            if head_name in touched:
                depends.add(("", "head"))
            shrunk: set[str] = set()
            for conv, members in groups.get(b.name, []):
                if conv in shrunk:
                    continue  # (the depthwise conv after an expansion) shrunk by its group
                channels = dict(model.named_modules())[conv].out_channels
                out.append(Resizer(b.name, self.name, conv, channels, members, 1,
                                   tuple(sorted(depends))))
                shrunk |= {m for m, kind, _ in members if kind != "in"}
        return out

    def count(self, resizer: Resizer, value: Any, values: dict[tuple[str, str], Any]) -> int:
        from searchcomp.choices.prune import n_remove

        rt = resizer.multiple
        for (unit, _axis), v in values.items():
            rt = math.lcm(rt, choices.channel_multiple(str(v), "head" if unit == "" else "conv"))
        return n_remove(float(value), resizer.channels, rt)


def untraceable(e: Exception) -> str:
    """Why nothing can be pruned in a model torch-pruning cannot trace."""
    return (f"torch-pruning cannot trace this model's channel dependencies "
            f"({type(e).__name__}: {e}); structured pruning is not available for it")


def multiple(block: Any, recipe: Any, blocks: list[Any], head_name: str,
             round_to: int = 1) -> int:
    """What pruning ``block`` keeps channel counts at multiples of: ``round_to`` and the
    channel multiple of every replacement in ``recipe`` on a layer this pruning shrinks (the
    block's own convs, and in a plain CNN the next block's conv or the head)."""
    owner = {conv: b.name for b in blocks for conv in b.convs}
    touched = set(block.pruning) | {c for cs in block.pruning.values() for c in cs}
    if not block.pruning:  # (a hand-made Block) its own convs at least
        touched = set(block.convs)
    out = math.lcm(round_to, choices.channel_multiple(recipe.choice(block.name, "conv")))
    for layer in touched:
        if layer in owner:
            out = math.lcm(out, choices.channel_multiple(recipe.choice(owner[layer], "conv")))
        elif layer == head_name and recipe.head != KEEP:
            out = math.lcm(out, choices.channel_multiple(recipe.head, "head"))
    return out
