"""Find the blocks of a model, the layers each choice may touch, and the values allowed."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

from torch import nn

from searchcomp import choices
from searchcomp.config import CHOICES, KEEP, NEUTRAL, ChoiceSet, Space
from searchcomp.models.factory import last_linear

_RESIDUAL = ("BasicBlock", "Bottleneck")
#: what a choice left out of the space file means: leave the layer alone
UNCHANGED = ChoiceSet(**{c: (v,) for c, v in NEUTRAL.items()})


@dataclass(frozen=True)
class Block:
    """One searchable block: its module name, conv layers, and allowed choice values."""

    name: str
    #: convs (full names) a ``conv`` choice replaces: every spatial (k > 1), ungrouped Conv2d
    convs: tuple[str, ...]
    choices: ChoiceSet
    #: the space-file field each choice's values came from (for error messages)
    origin: dict[str, str] = field(default_factory=dict, compare=False)

    def values(self) -> dict[str, list]:
        """Allowed values per choice, as plain lists."""
        return {c: list(getattr(self.choices, c)) for c in CHOICES}

    @property
    def size(self) -> int:
        """Number of distinct configurations of this block."""
        return math.prod(len(getattr(self.choices, c)) for c in CHOICES)


def spatial_convs(module: nn.Module, prefix: str) -> tuple[str, ...]:
    """Names of the Conv2d layers of ``module`` that a conv choice may replace."""
    out = []
    for n, m in module.named_modules():
        if (isinstance(m, nn.Conv2d) and m.groups == 1 and tuple(m.kernel_size) != (1, 1)):
            out.append(f"{prefix}.{n}" if n else prefix)
    return tuple(out)


def _select(model: nn.Module, space: Space) -> list[str]:
    sel = space.blocks.select
    if sel == "auto":
        names = [n for n, m in model.named_modules() if type(m).__name__ in _RESIDUAL]
        if not names:
            raise space.error("blocks.select", "no residual blocks (BasicBlock/Bottleneck) in "
                              f"{space.model.arch}; give globs on module names, e.g. "
                              "select: ['features.*']")
        return names
    globs = (sel,) if isinstance(sel, str) else sel
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen: list[str] = []
    for i, g in enumerate(globs):
        hits = [n for n, m in named if fnmatch.fnmatchcase(n, g)
                and any(True for _ in m.parameters())]
        if not hits:
            field_name = "blocks.select" if isinstance(sel, str) else f"blocks.select.{i}"
            examples = ", ".join(n for n, _ in named[:8])
            raise space.error(field_name, f"glob {g!r} matches no module with parameters; "
                              f"module names look like: {examples}, ...")
        chosen += [h for h in hits if h not in chosen]
    # keep the outermost: a block inside another selected block is part of it
    return [n for n in chosen if not any(n.startswith(o + ".") for o in chosen if o != n)]


def find_blocks(model: nn.Module, space: Space) -> list[Block]:
    """The searchable blocks of ``model`` with the choices the space allows on each."""
    names = _select(model, space)
    default = UNCHANGED.merged(space.blocks.default)
    per: dict[str, tuple[ChoiceSet, dict[str, str]]] = {
        n: (default, {c: f"blocks.default.{c}" for c in CHOICES}) for n in names}
    for glob, chosen in space.blocks.per_block.items():
        hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            raise space.error(f"blocks.per_block.{glob}", f"glob {glob!r} matches no block; "
                              f"blocks are: {', '.join(names)}")
        for n in hits:
            cs, origin = per[n]
            origin = dict(origin)
            for c in CHOICES:
                if getattr(chosen, c) is not None:
                    origin[c] = f"blocks.per_block.{glob}.{c}"
            per[n] = (cs.merged(chosen), origin)
    blocks = []
    for n in names:
        cs, origin = per[n]
        blocks.append(Block(n, spatial_convs(model.get_submodule(n), n), cs, origin))
    _check_registered(blocks, space)
    pmap = _prune_map(model, blocks, space)
    _check_conv_choices(model, blocks, space, pmap)
    _check_seed_configs(blocks, space)
    return blocks


def _check_registered(blocks: list[Block], space: Space) -> None:
    """Every conv value names a registered choice with the right argument."""
    for b in blocks:
        for value in b.choices.conv:
            try:
                choices.parse_value(value, "conv")
            except ValueError as e:
                raise space.error(b.origin["conv"], str(e)) from None


def _check_seed_configs(blocks: list[Block], space: Space) -> None:
    """A seed configuration must be possible somewhere, or it would silently be the base."""
    for i, cfg in enumerate(space.search.seed_configs):
        for k, v in cfg.items():
            if k == "head":
                if v not in space.blocks.head:
                    raise space.error(f"search.seed_configs.{i}", f"head {v!r} is not among "
                                      f"blocks.head {list(space.blocks.head)}")
            elif not any(v in getattr(b.choices, k) for b in blocks):
                raise space.error(f"search.seed_configs.{i}", f"{k} {v!r} is not allowed on any "
                                  "block; add it to blocks.default or blocks.per_block")


def _prune_map(model: nn.Module, blocks: list[Block], space: Space
               ) -> dict[str, dict[str, list[str]]]:
    """Which convs pruning shrinks in each block; rejects prune values on blocks where nothing
    can be pruned without touching the residual path or other blocks."""
    import torch

    from searchcomp.choices.prune import prune_map
    from searchcomp.models.factory import input_shape

    wanted = {b.name: model.get_submodule(b.name) for b in blocks if any(b.choices.prune)}
    if not wanted:
        return {}
    pmap = prune_map(model, wanted, torch.zeros(1, *input_shape(space.model)))
    for b in blocks:
        if b.name in pmap and not pmap[b.name]:
            raise space.error(b.origin["prune"], f"block {b.name} has no conv whose filters "
                              "can be removed inside it (every conv feeds the residual path or "
                              "another block); allow only prune 0.0 there")
    return pmap


def _check_conv_choices(model: nn.Module, blocks: list[Block], space: Space,
                        pmap: dict[str, dict[str, list[str]]]) -> None:
    """Every conv value must apply to every target conv, also with the block pruned by each
    allowed ratio (pruning runs first and keeps multiples of the value's argument)."""
    from searchcomp.choices.prune import n_remove

    for b in blocks:
        shrinks = pmap.get(b.name, {})
        for value in b.choices.conv:
            name, arg = choices.parse_value(value, "conv")
            if name == KEEP:
                continue
            if not b.convs:
                raise space.error(b.origin["conv"], f"{value}: block {b.name} has no spatial "
                                  "conv to replace")
            t = choices.get(name, "conv")
            round_to = math.lcm(space.blocks.prune_round_to, t.channel_multiple(arg))
            for ratio in b.choices.prune:
                for conv_name in b.convs:
                    conv = model.get_submodule(conv_name)
                    c_in, c_out = conv.in_channels, conv.out_channels
                    if ratio:
                        if conv_name in shrinks:
                            c_out -= n_remove(ratio, c_out, round_to)
                        for producer, consumers in shrinks.items():
                            if conv_name in consumers:
                                src = model.get_submodule(producer).out_channels
                                c_in -= n_remove(ratio, src, round_to)
                    probe = conv if (c_in, c_out) == (conv.in_channels, conv.out_channels) \
                        else nn.Conv2d(c_in, c_out, conv.kernel_size, conv.stride, conv.padding,
                                       conv.dilation, bias=conv.bias is not None,
                                       padding_mode=conv.padding_mode, device="meta")
                    why = t.check(probe, arg)
                    if why:
                        when = f" when the block is pruned by {ratio:g}" if ratio else ""
                        raise space.error(b.origin["conv"], f"{value} cannot apply to "
                                          f"{conv_name}{when}: {why}")


def find_head(model: nn.Module, space: Space) -> tuple[str, nn.Module]:
    """The classifier layer the ``head`` choice applies to, after checking every value."""
    hm = space.blocks.head_module
    if hm == "auto":
        name, layer = last_linear(model)
    else:
        try:
            layer = model.get_submodule(hm)
        except AttributeError:
            raise space.error("blocks.head_module", f"no module named {hm!r}") from None
        name = hm
    for value in space.blocks.head:
        try:
            tname, arg = choices.parse_value(value, "head")
        except ValueError as e:
            raise space.error("blocks.head", str(e)) from None
        if tname == KEEP:
            continue
        if not isinstance(layer, nn.Linear):
            raise space.error("blocks.head", f"{value}: head {name} is a "
                              f"{type(layer).__name__}, not an nn.Linear")
        why = choices.get(tname, "head").check(layer, arg)
        if why:
            raise space.error("blocks.head", f"{value} cannot apply to {name}: {why}")
    return name, layer


def space_size(blocks: list[Block], head_values: tuple[str, ...]) -> int:
    """Number of distinct candidates: the product of every block's and the head's options."""
    return math.prod(b.size for b in blocks) * len(head_values)
