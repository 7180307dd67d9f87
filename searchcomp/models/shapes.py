"""The channel counts a layer can meet once blocks are pruned, to check every choice against
each of them before any trial runs (pruning runs first and shrinks the layers it touches:
its own convs, and in a plain CNN the next block's conv or the classifier)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import nn

from searchcomp import choices
from searchcomp.config import KEEP

if TYPE_CHECKING:
    from searchcomp.models.blocks import Block


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


class Shrink:
    """Who shrinks which layer: each block's pruned convs and the layers fed by them."""

    def __init__(self, model: nn.Module, blocks: list[Block], round_to: int) -> None:
        self.model, self.round_to = model, round_to
        #: layer -> (block, pruned conv) pairs whose pruning shrinks the layer's inputs
        self.feeders: dict[str, list[tuple[Block, str]]] = {}
        for b in blocks:
            for conv, consumers in b.pruning.items():
                for c in consumers:
                    self.feeders.setdefault(c, []).append((b, conv))

    @staticmethod
    def _n_remove(ratio: float, channels: int, multiple: int) -> int:
        from searchcomp.choices.prune import n_remove  # torch-pruning: only when pruning

        return n_remove(ratio, channels, multiple)

    def _fewer_inputs(self, layer: nn.Module, producer: str, ratio: float, multiple: int
                      ) -> int:
        out = self.model.get_submodule(producer).out_channels
        # a Linear after a flatten takes each channel at every spatial position
        per = _io(layer)[0] // out if isinstance(layer, nn.Linear) else 1
        return self._n_remove(ratio, out, multiple) * per

    def sizes(self, block: Block | None, name: str, multiple: int
              ) -> Iterator[tuple[nn.Module, str]]:
        """Layer ``name`` as it is, then at every (in, out) channel count pruning can leave it:
        ``block``'s own ratios, and each other block feeding it at each of its ratios. Yields
        ``(layer or a meta-device stand-in, " when ...")``; ``multiple`` is what pruning keeps
        channel counts at multiples of."""
        layer = self.model.get_submodule(name)
        c_in, c_out = _io(layer)
        yield layer, ""
        feeders = self.feeders.get(name, [])
        if block is not None:
            for r in (r for r in block.choices.prune if r):
                out = c_out - (self._n_remove(r, c_out, multiple) if name in block.pruning
                               else 0)
                inn = c_in - sum(self._fewer_inputs(layer, p, r, multiple)
                                 for fb, p in feeders if fb is block)
                if (inn, out) != (c_in, c_out):
                    yield _probe(layer, inn, out), f" when the block is pruned by {r:g}"
        for fb, p in feeders:
            if fb is block:
                continue
            for r in (r for r in fb.choices.prune if r):
                inn = c_in - self._fewer_inputs(layer, p, r, multiple)
                yield _probe(layer, inn, c_out), f" when block {fb.name} is pruned by {r:g}"


def conv_reason(block: Block, value: str, shrink: Shrink) -> str | None:
    """Why ``value`` cannot be ``block``'s conv choice (at any channel count pruning may leave
    its target convs), or None."""
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


def head_reason(name: str, layer: nn.Module, value: str, shrink: Shrink) -> str | None:
    """Why head ``value`` cannot replace ``layer`` (also with the inputs pruning may leave
    it), or None."""
    cname, arg = choices.parse_value(value, "head")
    c = choices.get(cname, "head")
    multiple = math.lcm(shrink.round_to, c.channel_multiple(arg))
    for probe, when in shrink.sizes(None, name, multiple):
        why = c.reason(probe, arg)
        if why:
            return f"{value} cannot apply to {name}{when}: {why}"
    return None
