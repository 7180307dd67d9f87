"""Structured filter pruning of a block's internal width, with channels physically removed.

Only convolutions whose output channels are private to their block are pruned: the pruning
group torch-pruning derives for them (BN, activations, the consumer convs' input channels, ...)
must stay inside the block and must not reach the model output. That keeps every residual add,
every downsample branch and every other block's shapes untouched, so blocks can be pruned
independently and the model output shape never changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize
from torch_pruning.ops import OPTYPE

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
# else (reshapes, Linear, Conv3d, grouped convs, GroupNorm/LayerNorm, bare Parameters, ...)
# may be mis-sliced, e.g. the channel-as-depth Conv3d or the grouped conv + Meta mixer.
_SAFE_TYPES = {OPTYPE.CONV, OPTYPE.DEPTHWISE_CONV, OPTYPE.BN, OPTYPE.PRELU, OPTYPE.ELEMENTWISE,
               OPTYPE.CONCAT, OPTYPE.SPLIT}


def _node_is_safe(node: Any) -> bool:
    if node.type not in _SAFE_TYPES:
        return False
    m = node.module
    if node.type == OPTYPE.CONV:
        return isinstance(m, nn.Conv2d) and m.groups == 1
    if node.type == OPTYPE.DEPTHWISE_CONV:
        return isinstance(m, nn.Conv2d)
    return True


def _group_is_private(dg: tp.DependencyGraph, group: Any, inside: set[int],
                      model_objs: set[int]) -> bool:
    """True if every real layer/parameter the group changes is in ``inside``, all of them are
    layers torch-pruning slices exactly, and no pruned output reaches the model output."""
    for dep, _ in group:
        for node in (dep.source, dep.target):
            obj = node.module
            if id(obj) in model_objs and id(obj) not in inside:
                return False
            if not _node_is_safe(node):
                return False
        if dg.is_out_channel_pruning_fn(dep.handler) and not dep.target.outputs:
            return False  # the pruned channels are (part of) the model output
    return True


def _prunable(dg: tp.DependencyGraph, model: nn.Module, block: nn.Module) -> list[nn.Conv2d]:
    inside = {id(m) for m in block.modules()} | {id(p) for p in block.parameters()}
    model_objs = {id(m) for m in model.modules()} | {id(p) for p in model.parameters()}
    out = []
    for conv in block.modules():
        if not isinstance(conv, nn.Conv2d) or conv not in dg.module2node:
            continue
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels,
                                     idxs=list(range(conv.out_channels)))
        if _group_is_private(dg, group, inside, model_objs):
            out.append(conv)
    return out


def prune_map(model: nn.Module, blocks: dict[str, nn.Module], example_inputs: Any
              ) -> dict[str, dict[str, list[str]]]:
    """Per block: each prunable conv (full name) -> the convs whose inputs shrink with it.

    One dependency graph for all blocks; used to check choices before any trial runs.
    """
    dg = _build_graph(model, example_inputs)
    names = {id(m): n for n, m in model.named_modules()}
    out: dict[str, dict[str, list[str]]] = {}
    for bname, block in blocks.items():
        entry: dict[str, list[str]] = {}
        for conv in _prunable(dg, model, block):
            group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
            consumers = [names[id(dep.target.module)] for dep, _ in group
                         if dg.is_in_channel_pruning_fn(dep.handler)
                         and isinstance(dep.target.module, nn.Conv2d)
                         and id(dep.target.module) in names]
            entry[names[id(conv)]] = consumers
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
    """The convs of ``block`` whose filters can be removed without touching anything outside it.

    This is what makes pruning residual-safe: a conv that feeds a residual add (Bottleneck
    conv3, BasicBlock conv2) or the downsample branch is excluded, because pruning it would
    force the skip path and the neighbouring blocks to shrink too. For a torchvision
    Bottleneck the result is ``[conv1, conv2]``; for a BasicBlock ``[conv1]``.
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


def _l1_importance(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().abs().flatten(1).sum(1)


def _taylor_importance(model: nn.Module, convs: Sequence[nn.Conv2d],
                       grad_batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                       ) -> dict[nn.Conv2d, torch.Tensor]:
    """Molchanov et al. (2017) first-order Taylor criterion on each conv's output feature map:
    |sum over positions of activation * dLoss/dactivation|, averaged over examples.

    Gradients are taken w.r.t. the activations only (``torch.autograd.grad``), so parameter
    ``.grad`` fields and BN running stats (the model runs in eval mode) are left untouched.
    """
    acts: dict[nn.Conv2d, torch.Tensor] = {}
    hooks = [c.register_forward_hook(lambda m, i, o: acts.__setitem__(m, o)) for c in convs]
    total = {c: torch.zeros(c.out_channels) for c in convs}
    n_examples = 0
    was_training = model.training
    model.eval()
    try:
        for x, y in grad_batches:
            acts.clear()
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)  # grads exist even with frozen params
                loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
                used = [c for c in convs if c in acts]
                grads = torch.autograd.grad(loss, [acts[c] for c in used], allow_unused=True)
            for c, g in zip(used, grads, strict=True):
                if g is not None:
                    score = (acts[c].detach() * g).flatten(2).sum(2).abs().sum(0)
                    total[c] += score.cpu().float()
            n_examples += x.shape[0]
    finally:
        for h in hooks:
            h.remove()
        acts.clear()
        model.train(was_training)
    if n_examples == 0:
        raise ValueError("criterion='taylor' needs grad_batches: a list of (x, y) batches")
    return {c: t / n_examples for c, t in total.items()}


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


def prune_blocks(model: nn.Module, ratios: dict[str, float], example_inputs: Any,
                 criterion: str = "l1",
                 grad_batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 round_to: int | dict[str, int] = 1,
                 ) -> dict[str, dict[str, tuple[int, int]]]:
    """Remove the least important filters of every prunable conv of each named block, in place.

    ``round_to`` (one number, or per block) keeps the remaining channel counts at multiples of
    it where the original count is one, e.g. for a later ``meta:4`` replacement.

    ``ratios`` maps block names (as in ``model.named_modules()``) to the fraction in [0, 1) of
    filters to remove from each of the block's prunable convs (``round(ratio * out)``, leaving
    at least one). Channels are physically removed, with BN, consumer convs and everything
    coupled sliced consistently by torch-pruning, so the model gets cheaper for real (params,
    FLOPs and latency all drop) and its output shape is unchanged.

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
        imp = _taylor_importance(model, todo, grad_batches or [])
    else:
        imp = {c: _l1_importance(c) for c in todo}

    targets = {name: block for name, (block, _) in blocks.items()}
    shapes_before = _output_shapes(model, targets, example_inputs)
    result: dict[str, dict[str, tuple[int, int]]] = {}
    for name, convs in plan.items():
        before = {cname: c.out_channels for cname, c in convs}
        done: set[int] = set()  # convs already shrunk as part of a coupled group
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
            group.prune()
        result[name] = {cname: (before[cname], c.out_channels) for cname, c in convs}
    shapes_after = _output_shapes(model, targets, example_inputs)
    if shapes_after != shapes_before:  # a coupling torch-pruning got wrong; should not happen
        changed = [n for n in shapes_before if shapes_after.get(n) != shapes_before[n]]
        raise RuntimeError(f"pruning changed the output shape of {changed or 'the model'}; "
                           "the model is no longer usable")
    return result
