"""Find the blocks of a model, the layers each choice may touch, and the values allowed.

Values in ``blocks.default`` apply to every block they fit: a block where one cannot apply
(``meta:4`` on a conv with 3 inputs, pruning on a block whose every conv feeds a residual
add) leaves it out, and ``inspect`` says so; a value that fits no block, or one a
``per_block`` entry names, is an error naming its line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from searchcomp import choices
from searchcomp.config import CHOICES, KEEP, NEUTRAL, ChoiceSet, Space
from searchcomp.models.factory import head_candidates, last_linear
from searchcomp.models.families import auto_blocks, conv_targets, family_of, select_glob
from searchcomp.models.shapes import Shrink, conv_reason, head_reason

#: what a choice left out of the space file means: leave the layer alone
UNCHANGED = ChoiceSet(**{c: (v,) for c, v in NEUTRAL.items()})


@dataclass(frozen=True)
class Block:
    """One searchable block: its module name, conv layers, and allowed choice values."""

    name: str
    #: convs (full names) a ``conv`` choice replaces: the block's dense spatial convs, or its
    #: pointwise ones when it has none (see :func:`~searchcomp.models.families.conv_targets`)
    convs: tuple[str, ...]
    choices: ChoiceSet
    #: the space-file field each choice's values came from (for error messages)
    origin: dict[str, str] = field(default_factory=dict, compare=False)
    #: residual, inverted residual, plain or module (see :func:`family_of`)
    family: str = "module"
    #: each conv pruning shrinks (full name) -> the layers whose inputs shrink with it
    pruning: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    #: values of ``blocks.default`` left out on this block, and why
    dropped: dict[str, str] = field(default_factory=dict, compare=False)

    def values(self) -> dict[str, list]:
        """Allowed values per choice, as plain lists."""
        return {c: list(getattr(self.choices, c)) for c in CHOICES}

    @property
    def size(self) -> int:
        """Number of distinct configurations of this block."""
        return math.prod(len(getattr(self.choices, c)) for c in CHOICES)


def _select(model: nn.Module, space: Space) -> list[str]:
    sel = space.blocks.select
    if sel == "auto":
        names = auto_blocks(model)
        if not names:
            raise space.error("blocks.select", f"{space.model.arch} has no conv layers to "
                              "search; give globs on module names, e.g. select: ['features.*']")
        return names
    globs = (sel,) if isinstance(sel, str) else sel
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen: list[str] = []
    for i, g in enumerate(globs):
        hits = select_glob(named, g)
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
        hits = [n for n in names if _glob(n, glob)]
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
    _check_registered(per, space)
    pmap = _prune_map(model, {n: cs for n, (cs, _) in per.items()}, space)
    blocks = []
    for n in names:
        cs, origin = per[n]
        module = model.get_submodule(n)
        blocks.append(Block(n, conv_targets(module, n), cs, origin, family_of(module),
                            {k: tuple(v) for k, v in pmap.get(n, {}).items()}))
    blocks = [_narrow_prune(b, space) for b in blocks]
    shrink = Shrink(model, blocks, space.blocks.prune_round_to)
    blocks = [_narrow_conv(b, shrink, space) for b in blocks]
    _check_some_block_takes_each_default(blocks, space)
    _check_seed_configs(blocks, space)
    return blocks


def _glob(name: str, glob: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, glob)


def _check_registered(per: dict[str, tuple[ChoiceSet, dict[str, str]]], space: Space) -> None:
    """Every conv value names a registered choice with the right argument."""
    for cs, origin in per.values():
        for value in cs.conv:
            try:
                choices.parse_value(value, "conv")
            except ValueError as e:
                raise space.error(origin["conv"], str(e)) from None


def _from_default(b: Block, kind: str) -> bool:
    return b.origin.get(kind, "").startswith("blocks.default.")


def _narrow_prune(b: Block, space: Space) -> Block:
    """A block with nothing to prune keeps ``prune: [0.0]`` (from the defaults) or is an
    error (from ``per_block``)."""
    if not any(b.choices.prune) or b.pruning:
        return b
    why = (f"block {b.name} has no conv whose filters can be removed without changing "
           "another layer's outputs (every conv feeds a residual add, a concatenation or the "
           "model output)")
    if not _from_default(b, "prune"):
        raise space.error(b.origin["prune"], f"{why}; allow only prune 0.0 there")
    dropped = {**b.dropped, **{f"prune {r:g}": why for r in b.choices.prune if r}}
    return _replace(b, b.choices.model_copy(update={"prune": (0.0,)}), dropped)


def _narrow_conv(b: Block, shrink: Shrink, space: Space) -> Block:
    """Leave out default conv values that cannot apply to this block (at any allowed prune
    ratio); a ``per_block`` value that cannot is an error."""
    kept, dropped = [], dict(b.dropped)
    for value in b.choices.conv:
        why = conv_reason(b, value, shrink)
        if why is None:
            kept.append(value)
        elif _from_default(b, "conv"):
            dropped[value] = why
        else:
            raise space.error(b.origin["conv"], why)
    if len(kept) == len(b.choices.conv):
        return b
    return _replace(b, b.choices.model_copy(update={"conv": tuple(kept) or (KEEP,)}), dropped)


def _replace(b: Block, cs: ChoiceSet, dropped: dict[str, str]) -> Block:
    return Block(b.name, b.convs, cs, b.origin, b.family, b.pruning, dropped)


def _check_some_block_takes_each_default(blocks: list[Block], space: Space) -> None:
    """A default value every block had to leave out was a mistake: say why for the first."""
    for kind, values in (("conv", space.blocks.default.conv),
                         ("prune", space.blocks.default.prune)):
        for v in values or ():
            key = v if kind == "conv" else f"prune {v:g}"
            offered = [b for b in blocks if _from_default(b, kind)]
            if offered and all(key in b.dropped for b in offered):
                raise space.error(f"blocks.default.{kind}", offered[0].dropped[key])


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


def _prune_map(model: nn.Module, per: dict[str, ChoiceSet], space: Space
               ) -> dict[str, dict[str, list[str]]]:
    """Which convs pruning shrinks in each block that allows pruning, and what shrinks
    with them."""
    import torch

    from searchcomp.choices.prune import prune_map
    from searchcomp.models.factory import input_shape

    wanted = {n: model.get_submodule(n) for n, cs in per.items() if any(cs.prune)}
    if not wanted:
        return {}
    return prune_map(model, wanted, torch.zeros(1, *input_shape(space.model)))


def find_head(model: nn.Module, space: Space, blocks: list[Block] | None = None
              ) -> tuple[str, nn.Module]:
    """The classifier layer the ``head`` choice applies to, after checking every value (also
    on the inputs pruning ``blocks`` may leave it, in a plain CNN)."""
    hm = space.blocks.head_module
    if hm == "auto":
        name, layer = last_linear(model)
    else:
        try:
            layer = model.get_submodule(hm)
        except AttributeError:
            heads = ", ".join(describe_head(n, m) for n, m in head_candidates(model))
            raise space.error("blocks.head_module", f"no module named {hm!r}; candidates: "
                              f"{heads}") from None
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise space.error("blocks.head_module", f"{hm} is a {type(layer).__name__}; the "
                              "head must be an nn.Linear or an nn.Conv2d classifier")
        name = hm
    for value in space.blocks.head:
        try:
            tname, arg = choices.parse_value(value, "head")
        except ValueError as e:
            raise space.error("blocks.head", str(e)) from None
        if tname == KEEP:
            continue
        why = head_reason(name, layer, value, Shrink(model, blocks or [],
                                                     space.blocks.prune_round_to))
        if why:
            raise space.error("blocks.head", why)
    return name, layer


def describe_head(name: str, layer: nn.Module) -> str:
    """``classifier.0 Linear 512->256``: a head candidate and its shape."""
    if isinstance(layer, nn.Linear):
        return f"{name} Linear {layer.in_features}->{layer.out_features}"
    return f"{name} Conv2d {layer.in_channels}->{layer.out_channels}"


def space_size(blocks: list[Block], head_values: tuple[str, ...]) -> int:
    """Number of distinct candidates: the product of every block's and the head's options."""
    return math.prod(b.size for b in blocks) * len(head_values)
