"""Find the blocks of a model, the layers each choice may touch, and the values allowed."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

from torch import nn

from searchcomp import transforms
from searchcomp.models import last_linear
from searchcomp.space import CHOICES, ChoiceSet, Space

_RESIDUAL = ("BasicBlock", "Bottleneck")
#: what a choice left out of the space file means: leave the layer alone
NEUTRAL = ChoiceSet(conv=(transforms.KEEP,), prune=(0.0,), bits=(32,))


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
    default = NEUTRAL.merged(space.blocks.default)
    per: dict[str, tuple[ChoiceSet, dict[str, str]]] = {
        n: (default, {c: f"blocks.default.{c}" for c in CHOICES}) for n in names}
    for glob, choices in space.blocks.per_block.items():
        hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            raise space.error(f"blocks.per_block.{glob}", f"glob {glob!r} matches no block; "
                              f"blocks are: {', '.join(names)}")
        for n in hits:
            cs, origin = per[n]
            origin = dict(origin)
            for c in CHOICES:
                if getattr(choices, c) is not None:
                    origin[c] = f"blocks.per_block.{glob}.{c}"
            per[n] = (cs.merged(choices), origin)
    blocks = []
    for n in names:
        cs, origin = per[n]
        blocks.append(Block(n, spatial_convs(model.get_submodule(n), n), cs, origin))
    _check_conv_choices(model, blocks, space)
    return blocks


def _check_conv_choices(model: nn.Module, blocks: list[Block], space: Space) -> None:
    for b in blocks:
        for value in b.choices.conv:
            name, arg = transforms.parse_value(value)
            if name == transforms.KEEP:
                continue
            if not b.convs:
                raise space.error(b.origin["conv"], f"{value}: block {b.name} has no spatial "
                                  "conv to replace")
            t = transforms.get(name)
            for conv_name in b.convs:
                why = t.check(model.get_submodule(conv_name), arg)
                if why:
                    raise space.error(b.origin["conv"], f"{value} cannot apply to "
                                      f"{conv_name}: {why}")


def head_value(value: str) -> tuple[str, int | None]:
    """Parse a head choice: ``meta:G`` is the ``meta_head`` transform."""
    if value.startswith("meta:"):
        value = "meta_head:" + value[len("meta:"):]
    return transforms.parse_value(value)


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
        tname, arg = head_value(value)
        if tname == transforms.KEEP:
            continue
        if not isinstance(layer, nn.Linear):
            raise space.error("blocks.head", f"{value}: head {name} is a "
                              f"{type(layer).__name__}, not an nn.Linear")
        why = transforms.get(tname).check(layer, arg)
        if why:
            raise space.error("blocks.head", f"{value} cannot apply to {name}: {why}")
    return name, layer


def space_size(blocks: list[Block], head_values: tuple[str, ...]) -> int:
    """Number of distinct candidates: the product of every block's and the head's options."""
    return math.prod(b.size for b in blocks) * len(head_values)
