"""The channel counts a layer can meet once the resizing axes (``prune``, ``width``, ...)
shrink the layers they touch, to check every replacement against each of them before any
trial runs (resizing runs first: a block's own convs, in a plain CNN the next block's conv or
the classifier, the layers a stage's residual channels reach)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from typing import Any

from torch import nn

from searchcomp import choices


def _io(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels


def _probe(layer: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """``layer``'s kind with other channel counts, on the meta device (no memory)."""
    if (c_in, c_out) == _io(layer):
        return layer
    if isinstance(layer, nn.Linear):
        return nn.Linear(c_in, c_out, bias=layer.bias is not None, device="meta")
    return nn.Conv2d(c_in, c_out, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, bias=layer.bias is not None,
                     padding_mode=layer.padding_mode, device="meta")


@dataclass
class _Entry:
    """One way a layer shrinks: ``unit``'s value of a resizing axis removes channels of
    ``root`` (the layer itself for ``out``), and the layer loses ``per`` inputs per channel."""

    unit: Any
    side: str
    per: int | None
    ratios: tuple[float, ...]
    root: str | None
    #: a multiple the count always keeps (None: the replacement's own, as ``prune`` does)
    fixed: int | None
    when: str


class Shrink:
    """Who shrinks which layer: each resizing axis registers, per layer, the unit whose
    values shrink it (:meth:`add`); :meth:`sizes` gives every channel count they can leave."""

    def __init__(self, model: nn.Module, round_to: int) -> None:
        self.model, self.round_to = model, round_to
        self.entries: dict[str, list[_Entry]] = {}

    def add(self, unit: Any, layer: str, side: str, per: int | None, ratios: tuple[float, ...],
            root: str | None, fixed: int | None = None, when: str = "") -> None:
        """``unit``'s ratios shrink ``layer``'s outputs (``side`` ``out``: its own channels)
        or its inputs (``in``: ``root``'s removed channels, ``per`` inputs each; None: a
        Linear after a flatten, each channel at every position)."""
        if ratios:
            self.entries.setdefault(layer, []).append(
                _Entry(unit, side, per, tuple(ratios), root, fixed, when))

    def _removed(self, e: _Entry, layer: nn.Module, ratio: float, multiple: int) -> int:
        from searchcomp.choices.prune import n_remove  # torch-pruning: only when pruning

        m = multiple if e.fixed is None else math.lcm(multiple, e.fixed)
        if e.side == "out" and e.root is None:
            return n_remove(ratio, _io(layer)[1], m)
        source = self.model.get_submodule(e.root)
        channels = _io(source)[1]
        n = n_remove(ratio, channels, m)
        if e.side == "out":
            return n
        per = e.per if e.per is not None else (
            _io(layer)[0] // channels if isinstance(layer, nn.Linear) else 1)
        return n * per

    def sizes(self, block: Any, name: str, multiple: int) -> Iterator[tuple[nn.Module, str]]:
        """Layer ``name`` as it is, then at every (in, out) channel count the resizing axes can
        leave it, every combination of their ratios. Yields ``(layer or a meta-device
        stand-in, " when ...")``; ``multiple`` is what the counts keep multiples of."""
        layer = self.model.get_submodule(name)
        c_in, c_out = _io(layer)
        yield layer, ""
        entries = self.entries.get(name, [])
        units: dict[tuple[int, str], list[_Entry]] = {}
        for e in entries:  # one ratio per unit and axis: a block's prune shrinks in and out
            units.setdefault((id(e.unit), e.when), []).append(e)
        groups = list(units.values())
        for combo in product(*[(0.0, *g[0].ratios) for g in groups]):
            if not any(combo):
                continue
            inn, out, parts = c_in, c_out, []
            for g, r in zip(groups, combo, strict=True):
                if not r:
                    continue
                for e in g:
                    n = self._removed(e, layer, r, multiple)
                    if e.side == "out":
                        out -= n
                    else:
                        inn -= n
                parts.append(self._when(g[0], block, r))
            if (inn, out) != (c_in, c_out):
                yield _probe(layer, inn, out), " when " + " and ".join(parts)

    @staticmethod
    def _when(e: _Entry, block: Any, r: float) -> str:
        if e.when:
            return f"{e.when} {r:g}"
        if e.unit is block:
            return f"the block is pruned by {r:g}"
        return f"block {e.unit.name} is pruned by {r:g}"


def head_reason(name: str, layer: nn.Module, value: str, shrink: Shrink) -> str | None:
    """Why head ``value`` cannot replace ``layer`` (also with the inputs the resizing axes
    may leave it), or None."""
    cname, arg = choices.parse_value(value, "head")
    c = choices.get(cname, "head")
    multiple = math.lcm(shrink.round_to, c.channel_multiple(arg))
    for probe, when in shrink.sizes(None, name, multiple):
        why = c.reason(probe, arg)
        if why:
            return f"{value} cannot apply to {name}{when}: {why}"
    return None
