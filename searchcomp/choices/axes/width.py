"""``width``: the share of a stage's residual channels removed — the channels the residual
adds of a stage share, coupled through torch-pruning's dependency graph.

A block's ``prune`` never touches them (it keeps every add whole); this is what makes a
uniform whole-network pruner (Torch-Pruning's) fast. **A stage** is the set of blocks whose
outputs meet at the same residual adds: one torch-pruning group of output channels that
passes through an add (a ResNet stage with the stem or the previous stage's downsample; the
blocks of one width in a MobileNetV2). Its value is chosen on the stage's first block in
model order (the *owner*); the other blocks of the stage take none. The group also resizes
layers outside the stage's blocks — the stem, the next stage's first convs, the classifier's
inputs — and the shape-only costs count them.

The count removed is ``n_remove(ratio, channels, multiple)`` with one multiple for every
recipe: the space's ``prune_round_to`` and the channel multiple of every conv value offered
on a block the group touches, so a ``meta:G`` replacement still divides the channels, and the
removed count never depends on another block's choice. Channels are ranked by the group's L1
magnitude (``tp.importance.GroupMagnitudeImportance``), on the model as pruned so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from searchcomp import choices
from searchcomp.choices.axes import Axis, BuildState, Resizer, register
from searchcomp.choices.axes.prune import prune_code, untraceable


@dataclass
class Stage:
    """Blocks sharing one group of residual channels: ``root`` (the first conv whose output
    channels are in it, model order) and the blocks whose outputs are (owner first)."""

    root: str
    channels: int
    blocks: list[str]
    #: every block (of all) holding a layer the group resizes
    touched: list[str]
    #: (layer, kind, per) of every layer the group resizes
    members: list[tuple[str, str, int]]


@register
class Width(Axis):
    name = "width"
    neutral = 0.0
    order = 40
    phase = "resize"
    resizes = True
    scope = "stage"
    description = ("share of the stage's residual channels (those its adds share) to "
                   "remove, in [0, 1); chosen on the stage's first block")
    color = "#2f8f5b"
    heat_max = 0.9

    def anchors(self, allowed: dict[str, list]) -> list[dict[str, Any]]:
        """At each ratio ``prune`` offers too, both together: every conv's filters, the
        residual channels included — what a uniform whole-network pruner (Torch-Pruning's
        ``MagnitudePruner`` at one ratio) gives; each other value alone."""
        ratios = allowed.get("prune", [])
        return [{"prune": v, self.name: v} if v in ratios else {self.name: v}
                for v in allowed.get(self.name, [])]

    def parse(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0.0 <= value < 1.0:
            raise ValueError(f"width ratio {value!r} must be a number in [0, 1): the share of "
                             "a stage's residual channels to remove")
        return float(value)

    def code(self, value: Any) -> str:
        return prune_code(value)

    def legend(self) -> str:
        return "digit = tenths of the stage's residual channels removed (on its first block)"

    def label(self, value: Any) -> str:
        return f"width {float(value):g}"

    def heat(self, value: Any) -> float:
        return float(value)

    # -- which blocks own a stage ------------------------------------------------------
    def narrow(self, ctx: Any) -> None:
        wanted = [d for d in ctx.blocks if any(ctx.values(d, self.name))]
        if not wanted:
            return
        try:
            stages = find_stages(ctx.model, [d.name for d in ctx.blocks], ctx.example)
        except Exception as e:  # torch-pruning cannot trace this graph
            for d in wanted:
                for r in ctx.values(d, self.name):
                    if r:
                        ctx.drop(d, self.name, r, untraceable(e))
            return
        of = {b: st for st in stages for b in st.blocks}
        drafts = {d.name: d for d in ctx.blocks}
        for d in wanted:
            st = of.get(d.name)
            why = None
            if st is None:
                why = (f"no residual add shares block {d.name}'s output channels (or "
                       "torch-pruning cannot slice what does)")
            elif st.blocks[0] != d.name:
                why = f"a stage's width is chosen on its first block, {st.blocks[0]}"
            if why:
                for r in ctx.values(d, self.name):
                    if r:
                        ctx.drop(d, self.name, r, why)
                continue
            multiple = ctx.shrink.round_to
            for b in st.touched:  # every conv value offered where the group reaches
                for v in ctx.values(drafts[b], "conv") if b in drafts else ():
                    multiple = math.lcm(multiple, choices.channel_multiple(str(v)))
            d.info[self.name] = {"root": st.root, "channels": st.channels,
                                 "blocks": st.blocks, "touched": st.touched,
                                 "members": st.members, "multiple": multiple}
            ratios = tuple(r for r in ctx.values(d, self.name) if r)
            for layer, kind, per in st.members:
                ctx.shrink.add(d, layer, "out" if kind != "in" else "in",
                               per if kind == "in" else 1, ratios, st.root, multiple,
                               when=f"block {d.name}'s stage has width")

    # -- build ---------------------------------------------------------------------------
    def apply(self, state: BuildState) -> None:
        import torch
        import torch_pruning as tp

        from searchcomp.choices.coupling import _build_graph
        from searchcomp.choices.fit import relative_error
        from searchcomp.choices.probe import ERROR_IMAGES
        from searchcomp.choices.prune import n_remove

        todo = [(b, float(state.recipe.choice(b, self.name))) for b in state.blocks
                if state.recipe.choice(b, self.name)]
        if not todo:
            return
        x = state.calib[:ERROR_IMAGES]
        with torch.no_grad():
            ref = state.model.eval()(x)
        for b, ratio in todo:
            info = state.blocks[b].info.get(self.name)
            if info is None:
                from searchcomp.errors import ChoiceError

                raise ChoiceError(f"width {ratio:g} on {b}: it owns no stage of residual "
                                  "channels")
            root = state.model.get_submodule(info["root"])
            n = n_remove(ratio, root.out_channels, info["multiple"])
            if not n:
                continue
            dg = _build_graph(state.model, state.calib[:1])
            group = dg.get_pruning_group(root, tp.prune_conv_out_channels,
                                         idxs=list(range(root.out_channels)))
            imp = tp.importance.GroupMagnitudeImportance(p=1)(group)
            idxs = torch.argsort(imp, stable=True)[:n].tolist()
            group = dg.get_pruning_group(root, tp.prune_conv_out_channels, idxs=idxs)
            if dg.check_pruning_group(group):
                group.prune()
            with torch.no_grad():  # what the stage's channels carried, at the model's output
                y = state.model.eval()(x)
            state.errors[f"{b}:{self.name}"] = relative_error(ref, y)
            ref = y

    # -- shapes only ---------------------------------------------------------------------
    def resizers(self, model: Any, blocks: list[Any], example: Any, head_name: str
                 ) -> list[Resizer]:
        out = []
        for b in blocks:
            info = b.info.get(self.name)
            if info and any(b.choices.get(self.name) or ()):
                out.append(Resizer(b.name, self.name, info["root"], info["channels"],
                                   list(info["members"]), info["multiple"]))
        return out

    def count(self, resizer: Resizer, value: Any, values: dict[tuple[str, str], Any]) -> int:
        from searchcomp.choices.prune import n_remove

        return n_remove(float(value), resizer.channels, resizer.multiple)


def find_stages(model: Any, block_names: list[str], example: Any) -> list[Stage]:
    """The stages of ``model``: each group of output channels that passes through a residual
    add, that torch-pruning slices exactly and that holds some block's output."""
    import torch_pruning as tp
    from torch import nn
    from torch_pruning.ops import OPTYPE

    from searchcomp.choices.coupling import _build_graph, _node_is_safe, members

    dg = _build_graph(model, example)
    names = {id(m): n for n, m in model.named_modules()}
    seen: set[int] = set()
    stages = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or m not in dg.module2node or id(m) in seen:
            continue
        group = dg.get_pruning_group(m, tp.prune_conv_out_channels, idxs=[0])
        outs = [dep.target.module for dep, _ in group
                if dg.is_out_channel_pruning_fn(dep.handler)
                and isinstance(dep.target.module, nn.Conv2d)]
        seen |= {id(o) for o in outs}
        nodes = [n for dep, _ in group for n in (dep.source, dep.target)]
        adds = any(n.type == OPTYPE.ELEMENTWISE and
                   type(n.grad_fn).__name__.startswith("Add") for n in nodes)
        safe = all(_node_is_safe(n) and n.type not in (OPTYPE.CONCAT, OPTYPE.SPLIT)
                   for n in nodes)
        to_output = any(dg.is_out_channel_pruning_fn(dep.handler) and not dep.target.outputs
                        for dep, _ in group)
        if not (adds and safe) or to_output:
            continue
        out_names = [names[id(o)] for o in outs]
        owned = [b for b in block_names if any(o.startswith(b + ".") for o in out_names)]
        if not owned:
            continue
        layers = [names[id(dep.target.module)] for dep, _ in group
                  if id(dep.target.module) in names]
        touched = [b for b in block_names if any(t == b or t.startswith(b + ".")
                                                 for t in layers)]
        stages.append(Stage(name, m.out_channels, owned, touched, members(dg, group, names)))
    return stages
