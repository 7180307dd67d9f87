"""What a conv's output channels are coupled to, read from torch-pruning's dependency graph:
which convs of a block can lose filters alone (and why not), and every layer a group of
channels resizes — what pruning (:mod:`.prune`), the residual width axis and the shape-only
costs all start from.
"""

from __future__ import annotations

from typing import Any

import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize
from torch_pruning.ops import OPTYPE


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


def _group_problem(dg: tp.DependencyGraph, group: Any, inside: set[int],
                   model_objs: set[int], names: dict[int, str]) -> str | None:
    """Why a conv's group cannot lose channels alone, or None: every layer it touches must be
    one torch-pruning slices exactly, no conv or linear outside ``inside`` may lose output
    channels (only inputs), and no pruned output may reach the model output."""
    for dep, _ in group:
        for node in (dep.source, dep.target):
            if not _node_is_safe(node):
                m = node.module
                what = (f"a grouped conv ({names.get(id(m), '?')}, groups={m.groups})"
                        if isinstance(m, nn.Conv2d) else type(m).__name__.lstrip("_"))
                return f"its channels reach {what}, which block pruning does not slice"
        if dg.is_out_channel_pruning_fn(dep.handler):
            node = dep.target
            if not node.outputs:
                return "its channels are the model's output"
            obj = id(node.module)
            if obj in model_objs and obj not in inside and node.type not in _PASS_ON:
                return "it feeds a residual add or a concatenation shared with other layers"
    return None


def _group_is_safe(dg: tp.DependencyGraph, group: Any, inside: set[int],
                   model_objs: set[int]) -> bool:
    return _group_problem(dg, group, inside, model_objs, {}) is None


def _group_is_private(group: Any, inside: set[int], model_objs: set[int]) -> bool:
    """True if every real layer the group changes is inside the block (its output shape
    stays as it was)."""
    return all(id(node.module) not in model_objs or id(node.module) in inside
               for dep, _ in group for node in (dep.source, dep.target))


def _prunable(dg: tp.DependencyGraph, model: nn.Module, block: nn.Module,
              why: dict[str, str] | None = None) -> list[nn.Conv2d]:
    """The convs of ``block`` whose filters can be removed alone; ``why`` receives, per conv
    that cannot, the reason."""
    inside, model_objs = _objects(model, block)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for conv in block.modules():
        if not isinstance(conv, nn.Conv2d) or conv not in dg.module2node:
            continue
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels,
                                     idxs=list(range(conv.out_channels)))
        problem = _group_problem(dg, group, inside, model_objs, names)
        if problem is None:
            out.append(conv)
        elif why is not None:
            why[names[id(conv)]] = problem
    return out


def _objects(model: nn.Module, block: nn.Module) -> tuple[set[int], set[int]]:
    inside = {id(m) for m in block.modules()} | {id(p) for p in block.parameters()}
    model_objs = {id(m) for m in model.modules()} | {id(p) for p in model.parameters()}
    return inside, model_objs


def prune_map(model: nn.Module, blocks: dict[str, nn.Module], example_inputs: Any
              ) -> tuple[dict[str, dict[str, list[str]]], dict[str, str],
                         dict[str, dict[str, int]]]:
    """Per block: each prunable conv (full name) -> the convs and linears whose inputs
    shrink with it (inside the block or, in a plain CNN, the next layer outside it). A conv
    that loses its channels in an earlier conv's group (the depthwise conv after an
    expansion) is part of that entry, not one of its own. Also, per block with nothing to
    prune, why (its convs' reasons); and per consumer, the inputs it loses per channel
    removed (a Linear after a flatten: one per position).

    One dependency graph for all blocks; used to check choices before any trial runs.
    """
    dg = _build_graph(model, example_inputs)
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, dict[str, list[str]]] = {}
    reasons: dict[str, str] = {}
    per: dict[str, dict[str, int]] = {}
    for bname, block in blocks.items():
        entry: dict[str, list[str]] = {}
        coupled: set[int] = set()  # convs that lose channels in an earlier conv's group
        why: dict[str, str] = {}
        for conv in _prunable(dg, model, block, why):
            if id(conv) in coupled:
                continue  # e.g. the depthwise conv after an expansion: the same channels
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
            shrunk = {id(dep.target.module) for dep, _ in group
                      if dg.is_out_channel_pruning_fn(dep.handler)}
            coupled |= shrunk
            for dep, idxs in group:
                if dg.is_in_channel_pruning_fn(dep.handler) and id(dep.target.module) in names:
                    per.setdefault(bname, {})[names[id(dep.target.module)]] = max(1, len(idxs))
            entry[names[id(conv)]] = [
                names[id(dep.target.module)] for dep, _ in group
                if dg.is_in_channel_pruning_fn(dep.handler)
                and isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
                and id(dep.target.module) in names and id(dep.target.module) not in shrunk]
        out[bname] = entry
        if not entry:
            detail = "; ".join(f"{c[len(bname) + 1:] or c}: {w}" for c, w in why.items())
            reasons[bname] = (f"block {bname} has no conv whose filters can be removed without "
                              f"changing another layer's outputs" + (f" ({detail})" if detail
                                                                      else ""))
    return out, reasons, per


def members(dg: tp.DependencyGraph, group: Any, names: dict[int, str]
            ) -> list[tuple[str, str, int]]:
    """Every layer ``group`` (traced with one index) resizes, as ``(name, kind, per)``: kind
    ``out`` / ``in`` (a conv's or linear's output or input channels), ``depthwise`` (a
    depthwise conv's channels and groups) or ``features`` (a BatchNorm); ``per``: the
    channels it loses per channel of the group (a Linear after a flatten: one per position)."""
    out: dict[tuple[str, str], int] = {}  # a layer may lose inputs and outputs both
    for dep, idxs in group:
        m = dep.target.module
        if id(m) not in names or not any(True for _ in m.parameters(recurse=False)):
            continue  # activations, adds: no shape of their own
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            kind = "features"
        elif isinstance(m, nn.Conv2d) and dep.target.type == OPTYPE.DEPTHWISE_CONV:
            kind = "depthwise"
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            kind = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
        else:
            raise ValueError(f"a pruning group resizes {type(m).__name__} {names[id(m)]}, "
                             "which has no shape-only form")
        out.setdefault((names[id(m)], kind), max(1, len(idxs)))
    return [(n, k, per) for (n, k), per in out.items()]


def prune_groups(model: nn.Module, blocks: dict[str, nn.Module], example_inputs: Any
                 ) -> dict[str, list[tuple[str, list[tuple[str, str, int]]]]]:
    """Per block, in pruning order: each prunable conv (full name) and every layer its pruning
    group resizes (:func:`members`). With :func:`n_remove` this gives the shapes
    :func:`prune_blocks` leaves without pruning anything (shape-only costs)."""
    dg = _build_graph(model, example_inputs)
    names = {id(m): n for n, m in model.named_modules()}
    return {bname: [(names[id(conv)], members(dg, dg.get_pruning_group(
                conv, tp.prune_conv_out_channels, idxs=[0]), names))
                    for conv in _prunable(dg, model, block)]
            for bname, block in blocks.items()}
