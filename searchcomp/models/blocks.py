"""Find the blocks of a model, the layers each choice may touch, and the values allowed.

Which values can apply to a block is each axis's own call (:meth:`Axis.narrow
<searchcomp.choices.axes.Axis.narrow>`), resizing axes first, so a replacement is checked at
every channel count they can leave. A value from ``blocks.default`` that cannot apply to a
block is left out there, and ``inspect`` says where and why — also when no block can take it
(a default list is written once for many models); a ``per_block`` value that cannot apply is
an error naming its line.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from searchcomp import choices
from searchcomp.choices import axes
from searchcomp.config import KEEP, ChoiceSet, Space
from searchcomp.models.factory import head_candidates, input_shape, last_linear
from searchcomp.models.families import auto_blocks, conv_targets, family_of, select_glob
from searchcomp.models.shapes import Shrink, head_reason


@dataclass(frozen=True)
class Block:
    """One searchable block: its module name, conv layers, and allowed choice values."""

    name: str
    #: convs (full names) a ``conv`` choice replaces: the block's dense spatial convs, or its
    #: pointwise ones when it has none (see :func:`~searchcomp.models.families.conv_targets`)
    convs: tuple[str, ...]
    choices: ChoiceSet
    #: the space-file field each axis's values came from (for error messages)
    origin: dict[str, str] = field(default_factory=dict, compare=False)
    #: residual, inverted residual, dense, branches, plain or module (see :func:`family_of`)
    family: str = "module"
    #: each conv pruning shrinks (full name) -> the layers whose inputs shrink with it
    pruning: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    #: values of ``blocks.default`` left out on this block (by label), and why
    dropped: dict[str, str] = field(default_factory=dict, compare=False)
    #: what an axis found about this block when it narrowed its values (e.g. its stage)
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def allowed(self, axis: str) -> tuple:
        """The values of ``axis`` allowed here (its neutral value when the space gives none)."""
        return tuple(self.choices.get(axis) or (axes.neutral(axis),))

    def values(self) -> dict[str, list]:
        """Allowed values per axis, as plain lists."""
        return {a: list(self.allowed(a)) for a in axes.names()}

    @property
    def size(self) -> int:
        """Number of distinct configurations of this block."""
        return math.prod(len(self.allowed(a)) for a in axes.names())


class Blocks(list):
    """The blocks of a model, with who shrinks which layer (:class:`Shrink`), to check the
    head's values against the same channel counts."""

    shrink: Shrink | None = None


@dataclass
class Draft:
    """A block while its axes narrow its values."""

    name: str
    module: nn.Module
    convs: tuple[str, ...]
    family: str
    values: dict[str, list]
    origin: dict[str, str]
    dropped: dict[str, str] = field(default_factory=dict)
    pruning: dict[str, tuple[str, ...]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class Narrowing:
    """What :meth:`Axis.narrow` works on: the model, the drafts, and the shrinkage record."""

    def __init__(self, model: nn.Module, space: Space, blocks: list[Draft]) -> None:
        import torch

        self.model, self.space, self.blocks = model, space, blocks
        self.example = torch.zeros(1, *input_shape(space.model))
        self.shrink = Shrink(model, space.blocks.prune_round_to)

    def values(self, d: Draft, axis: str) -> tuple:
        """The values of ``axis`` still allowed on ``d``."""
        return tuple(d.values.get(axis, ()))

    def drop(self, d: Draft, axis: str, value: Any, why: str) -> None:
        """Leave ``value`` out on ``d`` (a default), or refuse it at its line (``per_block``)."""
        a = axes.get(axis)
        if not d.origin.get(axis, "").startswith("blocks.default."):
            raise self.space.error(d.origin[axis], why)
        d.values[axis] = [v for v in d.values[axis] if v != value] or [a.neutral]
        d.dropped[a.label(value)] = why


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


def find_blocks(model: nn.Module, space: Space) -> Blocks:
    """The searchable blocks of ``model`` with the values the space allows on each."""
    names = _select(model, space)
    known = axes.names()
    _check_keys(space, known)
    drafts = []
    for n in names:
        values: dict[str, list] = {}
        origin: dict[str, str] = {}
        for a in known:
            given = space.blocks.default.get(a)
            values[a] = list(given) if given is not None else [axes.neutral(a)]
            origin[a] = f"blocks.default.{a}"
        module = model.get_submodule(n)
        drafts.append(Draft(n, module, conv_targets(module, n), family_of(module), values,
                            origin))
    for glob, chosen in space.blocks.per_block.items():
        hits = [d for d in drafts if _glob(d.name, glob)]
        if not hits:
            raise space.error(f"blocks.per_block.{glob}", f"glob {glob!r} matches no block; "
                              f"blocks are: {', '.join(names)}")
        for d in hits:
            for a in known:
                if chosen.get(a) is not None:
                    d.values[a] = list(chosen.get(a))
                    d.origin[a] = f"blocks.per_block.{glob}.{a}"
    for d in drafts:
        for a in known:
            try:
                d.values[a] = [axes.get(a).parse(v) for v in d.values[a]]
            except ValueError as e:
                raise space.error(d.origin[a], str(e)) from None
    ctx = Narrowing(model, space, drafts)
    phases = axes.PHASES
    for axis in sorted(axes.all_axes(), key=lambda x: (phases.index(x.phase), x.order)):
        axis.narrow(ctx)
    blocks = Blocks(Block(d.name, d.convs, ChoiceSet(**{a: tuple(v) for a, v in d.values.items()}),
                          d.origin, d.family, d.pruning, d.dropped, d.info) for d in drafts)
    blocks.shrink = ctx.shrink
    _check_seed_configs(blocks, space)
    return blocks


def _glob(name: str, glob: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, glob)


def _check_keys(space: Space, known: list[str]) -> None:
    """Every key of ``blocks.default`` and ``per_block`` names a registered axis."""
    sets = [("blocks.default", space.blocks.default)] + [
        (f"blocks.per_block.{g}", cs) for g, cs in space.blocks.per_block.items()]
    for where, cs in sets:
        for key in cs.keys():
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}" if near else ""
                raise space.error(f"{where}.{key}", f"unknown choice axis {key!r}{hint}; "
                                  f"axes: {', '.join(known)}")


def _check_seed_configs(blocks: list[Block], space: Space) -> None:
    """A seed configuration must be possible somewhere, or it would silently be the base."""
    known = axes.names()
    for i, cfg in enumerate(space.search.seed_configs):
        for k, v in cfg.items():
            where = f"search.seed_configs.{i}"
            if k == "head":
                if v not in space.blocks.head:
                    raise space.error(where, f"head {v!r} is not among blocks.head "
                                      f"{list(space.blocks.head)}")
                continue
            if k not in known:
                raise space.error(where, f"seed config keys must be among "
                                  f"{', '.join([*known, 'head'])}; got {k!r}")
            try:
                v = axes.get(k).parse(v)
            except ValueError as e:
                raise space.error(where, str(e)) from None
            if not any(v in b.allowed(k) for b in blocks):
                raise space.error(where, f"{k} {v!r} is not allowed on any block; add it to "
                                  "blocks.default or blocks.per_block")


def find_head(model: nn.Module, space: Space, blocks: list[Block] | None = None
              ) -> tuple[str, nn.Module]:
    """The classifier layer the ``head`` choice applies to, after checking every value (also
    on the inputs the resizing axes may leave it: ``blocks`` as :func:`find_blocks` gives
    them)."""
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
        shrink = getattr(blocks, "shrink", None) or Shrink(model, space.blocks.prune_round_to)
        why = head_reason(name, layer, value, shrink)
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
