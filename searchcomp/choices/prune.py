"""Structured filter pruning of a block's width, with channels physically removed.

A conv of a block may be pruned when the group torch-pruning derives for it (BN, activations,
the consumers' input channels, ...) changes no other conv's or linear's *outputs* and does not
reach the model output. That keeps every residual add and concatenation whole: a conv feeding
an add is coupled to the other branch's conv, so it is never pruned, and ResNet blocks prune
only their internal width (Bottleneck conv1, conv2; BasicBlock conv1), inverted residuals
their expansion width. In a plain CNN (no add) a conv's filters are removed together with the
next layer's inputs, wherever that layer is (the next block's conv, or the classifier's
Linear after a flatten), as in source 003's VGG pruning.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from searchcomp.choices.coupling import (  # noqa: F401 - re-exported: what pruning starts from
    _build_graph,
    _group_is_private,
    _objects,
    _prunable,
    members,
    prune_groups,
    prune_map,
)
from searchcomp.choices.importance import l1_importance, taylor_importance

CRITERIA = ("l1", "taylor")


def prunable_convs(model: nn.Module, block: nn.Module, example_inputs: Any) -> list[nn.Conv2d]:
    """The convs of ``block`` whose filters can be removed without changing any other layer's
    outputs (their consumers lose inputs, BN and the like lose channels).

    This is what makes pruning residual-safe: a conv that feeds a residual add (Bottleneck
    conv3, BasicBlock conv2) or the downsample branch is excluded, because pruning it would
    force the skip path and the neighbouring blocks to shrink too. For a torchvision
    Bottleneck the result is ``[conv1, conv2]``; for a BasicBlock ``[conv1]``; for a conv of
    a plain CNN, the conv itself.
    """
    if not any(m is block for m in model.modules()):
        raise ValueError("block is not a submodule of model")
    dg = _build_graph(model, example_inputs)
    return _prunable(dg, model, block)


def n_remove(ratio: float, channels: int, round_to: int = 1) -> int:
    """Filters to remove: round(ratio * channels), keeping at least one (or ``round_to``)
    and, when ``channels`` allows it, a multiple of ``round_to`` channels (so a grouped
    replacement of the pruned conv still divides them)."""
    n = max(0, min(round(ratio * channels), channels - 1))
    if round_to > 1 and channels % round_to == 0 and n:
        keep = max(round_to, round_to * round((channels - n) / round_to))
        n = channels - keep
    return n


def _rt(round_to: int | dict[str, int], name: str) -> int:
    return round_to.get(name, 1) if isinstance(round_to, dict) else round_to


def _validate(model: nn.Module,
              ratios: dict[str, float]) -> dict[str, tuple[nn.Module, float]]:
    modules = dict(model.named_modules())
    blocks: dict[str, tuple[nn.Module, float]] = {}
    for name, ratio in ratios.items():
        if name not in modules or name == "":
            near = [n for n in modules if n and n.split(".")[0] == name.split(".")[0]][:8]
            hint = f"; e.g. {', '.join(near)}" if near else ""
            raise ValueError(f"unknown block {name!r}: not a module name of the model{hint}")
        try:
            if isinstance(ratio, (str, bytes, bool)):
                raise TypeError
            r = float(ratio)
        except (TypeError, ValueError):
            raise ValueError(f"pruning ratio of {name!r} must be a number, got {ratio!r}") from None
        if not 0.0 <= r < 1.0:
            raise ValueError(f"pruning ratio of {name!r} must be in [0, 1) (the fraction of "
                             f"filters removed; 1 would remove every filter), got {ratio!r}")
        blocks[name] = (modules[name], r)
    names = list(blocks)
    for a in names:
        for b in names:
            if a != b and b.startswith(a + "."):
                raise ValueError(f"blocks {a!r} and {b!r} overlap; give each block once")
    return blocks


def _output_shapes(model: nn.Module, modules: dict[str, nn.Module],
                   example_inputs: Any) -> dict[str, Any]:
    """Output shapes of ``modules`` (and of the model, under ``""``) on ``example_inputs``."""
    shapes: dict[str, Any] = {}

    def shape_of(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return tuple(o.shape)
        if isinstance(o, (tuple, list)):
            return tuple(shape_of(v) for v in o)
        if isinstance(o, dict):
            return {k: shape_of(v) for k, v in o.items()}
        return None

    hooks = [m.register_forward_hook(
        lambda _m, _i, o, name=name: shapes.__setitem__(name, shape_of(o)))
        for name, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                out = model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                out = model(*example_inputs)
            else:
                out = model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    shapes[""] = shape_of(out)
    return shapes


def _channels(m: nn.Module, side: str) -> int | None:
    if isinstance(m, nn.Conv2d):
        return m.out_channels if side == "out" else m.in_channels
    if isinstance(m, nn.Linear):
        return m.out_features if side == "out" else m.in_features
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.num_features
    return None


class _Removed:
    """The original indices of the channels each layer lost, over several pruning groups."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {id(m): n for n, m in model.named_modules()}
        self.kept: dict[tuple[str, str], list[int]] = {}
        self.out: dict[str, dict[str, Any]] = {}

    def record(self, dg: tp.DependencyGraph, group: Any, root: str) -> None:
        """Note what ``group`` (rooted at conv ``root``) removes, before it is pruned."""
        for dep, idxs in group:
            m = dep.target.module
            name = self.names.get(id(m))
            side = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
            size = _channels(m, side) if name is not None else None
            if size is None:
                continue
            kept = self.kept.setdefault((name, side), list(range(size)))
            gone = {int(i) for i in idxs}
            entry = self.out.setdefault(name, {})
            entry.setdefault(side, []).extend(kept[i] for i in sorted(gone))
            entry.setdefault(f"{side}_from", set()).add(root)
            self.kept[(name, side)] = [k for i, k in enumerate(kept) if i not in gone]


def prune_blocks(model: nn.Module, ratios: dict[str, float], example_inputs: Any,
                 criterion: str = "l1",
                 grad_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 round_to: int | dict[str, int] = 1,
                 removed: dict[str, dict[str, Any]] | None = None,
                 ) -> dict[str, dict[str, tuple[int, int]]]:
    """Remove the least important filters of every prunable conv of each named block, in place.

    ``round_to`` (one number, or per block) keeps the remaining channel counts at multiples of
    it where the original count is one, e.g. for a later ``meta:4`` replacement.

    ``ratios`` maps block names (as in ``model.named_modules()``) to the fraction in [0, 1) of
    filters to remove from each of the block's prunable convs (``round(ratio * out)``, leaving
    at least one). Channels are physically removed, with BN, consumer convs and everything
    coupled sliced consistently by torch-pruning, so the model gets cheaper for real (params,
    FLOPs and latency all drop) and its output shape is unchanged. A block of a plain CNN
    loses output channels (and the next layer the matching inputs); a residual block keeps its
    output shape.

    ``removed``, if given, receives per layer (full name) the original indices of the
    channels it lost: ``{"out": [...], "in": [...], "out_from": {conv}, "in_from": {conv}}``
    (``*_from``: the pruned convs whose groups removed them).

    ``criterion`` is ``"l1"`` (smallest filter L1 norm, Li et al. 2017; needs no data) or
    ``"taylor"`` (Molchanov et al. 2017, on ``grad_batches`` with a cross-entropy loss). All
    importances are computed on the unpruned model, and the dependency graph is built once,
    before any block is pruned.

    Returns ``{block: {conv name relative to block: (out_channels before, after)}}``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    blocks = _validate(model, ratios)
    if not blocks:
        return {}
    dg = _build_graph(model, example_inputs)
    plan: dict[str, list[tuple[str, nn.Conv2d]]] = {}
    for name, (block, _) in blocks.items():
        rel = {id(m): n for n, m in block.named_modules()}
        plan[name] = [(rel[id(c)], c) for c in _prunable(dg, model, block)]
    todo = [c for name in plan for _, c in plan[name]
            if n_remove(blocks[name][1], c.out_channels, _rt(round_to, name))]
    if criterion == "taylor":
        imp = taylor_importance(model, todo, grad_batches or [])
    else:
        imp = {c: l1_importance(c) for c in todo}

    names = {id(m): n for n, m in model.named_modules()}
    track = _Removed(model)
    private: set[str] = set()  # blocks whose output shape must not change
    model_objs = {id(m) for m in model.modules()} | {id(p) for p in model.parameters()}
    targets = {name: block for name, (block, _) in blocks.items()}
    shapes_before = _output_shapes(model, targets, example_inputs)
    result: dict[str, dict[str, tuple[int, int]]] = {}
    for name, convs in plan.items():
        inside = _objects(model, blocks[name][0])[0]
        before = {cname: c.out_channels for cname, c in convs}
        done: set[int] = set()  # convs already shrunk as part of a coupled group
        is_private = True
        for _, conv in convs:
            n = n_remove(blocks[name][1], conv.out_channels, _rt(round_to, name))
            if n == 0 or id(conv) in done:
                continue
            idxs = torch.argsort(imp[conv], stable=True)[:n].tolist()
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
            if not dg.check_pruning_group(group):
                continue  # a coupled layer would lose all its channels
            for dep, _ in group:
                if dg.is_out_channel_pruning_fn(dep.handler):
                    done.add(id(dep.target.module))
            is_private &= _group_is_private(group, inside, model_objs)
            track.record(dg, group, names[id(conv)])
            group.prune()
        if is_private:
            private.add(name)
        result[name] = {cname: (before[cname], c.out_channels) for cname, c in convs}
    shapes_after = _output_shapes(model, targets, example_inputs)
    changed = [n for n in ["", *private] if shapes_after.get(n) != shapes_before[n]]
    if changed:  # a coupling torch-pruning got wrong; should not happen
        raise RuntimeError(f"pruning changed the output shape of "
                           f"{[c or 'the model' for c in changed]}; the model is no longer usable")
    if removed is not None:
        removed.update(track.out)
    return result
