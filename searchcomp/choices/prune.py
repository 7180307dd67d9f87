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
from torch.nn.utils import parametrize
from torch_pruning.ops import OPTYPE

from searchcomp.choices.importance import l1_importance, taylor_importance

CRITERIA = ("l1", "taylor")


def _build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("prune before quantizing: the model has parametrized (quantized) "
                         "weights, which torch-pruning cannot slice")
    was_training = model.training
    model.eval()  # tracing in eval mode keeps BN running stats unchanged
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                     verbose=False)
    finally:
        model.train(was_training)


# Layer kinds torch-pruning slices exactly along the channel dim; a group touching anything
# else (Conv3d, grouped convs, GroupNorm/LayerNorm, bare Parameters, ...) may be mis-sliced,
# e.g. the channel-as-depth Conv3d or the grouped conv + Meta mixer.
_SAFE_TYPES = {OPTYPE.CONV, OPTYPE.DEPTHWISE_CONV, OPTYPE.BN, OPTYPE.PRELU, OPTYPE.ELEMENTWISE,
               OPTYPE.CONCAT, OPTYPE.SPLIT, OPTYPE.LINEAR, OPTYPE.RESHAPE}
# per-channel layers: they may lose channels wherever they are (they only pass them on)
_PASS_ON = {OPTYPE.BN, OPTYPE.PRELU, OPTYPE.ELEMENTWISE, OPTYPE.DEPTHWISE_CONV}


def _node_is_safe(node: Any) -> bool:
    if node.type not in _SAFE_TYPES:
        return False
    m = node.module
    if node.type == OPTYPE.CONV:
        return isinstance(m, nn.Conv2d) and m.groups == 1
    if node.type == OPTYPE.DEPTHWISE_CONV:
        return isinstance(m, nn.Conv2d)
    if node.type == OPTYPE.RESHAPE:  # only the flatten in front of a classifier Linear
        return bool(node.outputs) and all(o.type == OPTYPE.LINEAR for o in node.outputs)
    return True


def _group_is_safe(dg: tp.DependencyGraph, group: Any, inside: set[int],
                   model_objs: set[int]) -> bool:
    """True if every layer the group touches is one torch-pruning slices exactly, no conv or
    linear outside ``inside`` loses output channels (only inputs), and no pruned output
    reaches the model output."""
    for dep, _ in group:
        if not (_node_is_safe(dep.source) and _node_is_safe(dep.target)):
            return False
        if dg.is_out_channel_pruning_fn(dep.handler):
            node = dep.target
            if not node.outputs:
                return False  # the pruned channels are (part of) the model output
            obj = id(node.module)
            if obj in model_objs and obj not in inside and node.type not in _PASS_ON:
                return False  # coupled to another layer's outputs: a residual add or concat
    return True


def _group_is_private(group: Any, inside: set[int], model_objs: set[int]) -> bool:
    """True if every real layer the group changes is inside the block (its output shape
    stays as it was)."""
    return all(id(node.module) not in model_objs or id(node.module) in inside
               for dep, _ in group for node in (dep.source, dep.target))


def _prunable(dg: tp.DependencyGraph, model: nn.Module, block: nn.Module) -> list[nn.Conv2d]:
    inside, model_objs = _objects(model, block)
    out = []
    for conv in block.modules():
        if not isinstance(conv, nn.Conv2d) or conv not in dg.module2node:
            continue
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels,
                                     idxs=list(range(conv.out_channels)))
        if _group_is_safe(dg, group, inside, model_objs):
            out.append(conv)
    return out


def _objects(model: nn.Module, block: nn.Module) -> tuple[set[int], set[int]]:
    inside = {id(m) for m in block.modules()} | {id(p) for p in block.parameters()}
    model_objs = {id(m) for m in model.modules()} | {id(p) for p in model.parameters()}
    return inside, model_objs


def prune_map(model: nn.Module, blocks: dict[str, nn.Module], example_inputs: Any
              ) -> dict[str, dict[str, list[str]]]:
    """Per block: each prunable conv (full name) -> the convs and linears whose inputs
    shrink with it (inside the block or, in a plain CNN, the next layer outside it). A conv
    that loses its channels in an earlier conv's group (the depthwise conv after an
    expansion) is part of that entry, not one of its own.

    One dependency graph for all blocks; used to check choices before any trial runs.
    """
    dg = _build_graph(model, example_inputs)
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, dict[str, list[str]]] = {}
    for bname, block in blocks.items():
        entry: dict[str, list[str]] = {}
        coupled: set[int] = set()  # convs that lose channels in an earlier conv's group
        for conv in _prunable(dg, model, block):
            if id(conv) in coupled:
                continue  # e.g. the depthwise conv after an expansion: the same channels
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
            shrunk = {id(dep.target.module) for dep, _ in group
                      if dg.is_out_channel_pruning_fn(dep.handler)}
            coupled |= shrunk
            entry[names[id(conv)]] = [
                names[id(dep.target.module)] for dep, _ in group
                if dg.is_in_channel_pruning_fn(dep.handler)
                and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
                and id(dep.target.module) in names and id(dep.target.module) not in shrunk]
        out[bname] = entry
    return out


def prune_groups(model: nn.Module, blocks: dict[str, nn.Module], example_inputs: Any
                 ) -> dict[str, list[tuple[str, list[tuple[str, str]]]]]:
    """Per block, in pruning order: each prunable conv (full name) and every layer its pruning
    group resizes, as ``(name, kind)`` with kind ``out`` / ``in`` (a conv's output or input
    channels), ``depthwise`` (a depthwise conv's channels and groups) or ``features`` (a
    BatchNorm). With :func:`n_remove` this gives the shapes :func:`prune_blocks` leaves
    without pruning anything (shape-only costs)."""
    dg = _build_graph(model, example_inputs)
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, list[tuple[str, list[tuple[str, str]]]]] = {}
    for bname, block in blocks.items():
        entry = []
        for conv in _prunable(dg, model, block):
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
            members: dict[str, str] = {}
            for dep, _ in group:
                m = dep.target.module
                if id(m) not in names or not any(True for _ in m.parameters(recurse=False)):
                    continue  # activations, adds: no shape of their own
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    kind = "features"
                elif isinstance(m, nn.Conv2d) and dep.target.type == OPTYPE.DEPTHWISE_CONV:
                    kind = "depthwise"
                elif isinstance(m, nn.Conv2d):
                    kind = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                else:
                    raise ValueError(f"pruning {names[id(conv)]} resizes "
                                     f"{type(m).__name__} {names[id(m)]}, which has no "
                                     "shape-only form")
                members.setdefault(names[id(m)], kind)
            entry.append((names[id(conv)], list(members.items())))
        out[bname] = entry
    return out


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
