"""The trials every study starts with: the base (every block ``keep``), the one-minute
baselines (the *anchors*: what a practitioner tries first, every block alike) and the space's
own uniform seed configurations, queued once (idempotent under the study lock).

Anchors (``search.anchors``, on by default): what each axis offers as a one-minute baseline
(:meth:`searchcomp.choices.axes.Axis.anchors`), every block alike: the greedy rule's conv
swap when allowed, each allowed prune ratio, each allowed bit width, the stage widths (with
``prune`` at the ratios both offer: a uniform whole-network pruner such as Torch-Pruning's),
and in the ``onnxruntime-int8`` runtime the all-8-bit base. They run at full fidelity in every strategy, are marked
``anchor`` (the ``strategy`` and ``tag`` user attributes) and count toward the budget like
any trial: the search's front has to beat them, not just contain the base.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from searchcomp.candidate import Recipe
from searchcomp.config import KEEP
from searchcomp.search.runner import recipe_params
from searchcomp.search.states import is_done, is_running_search, params_key, taken_keys
from searchcomp.search.trial import TrialContext

__all__ = ["anchor_recipes", "enqueue_seeds"]


def anchor_recipes(ctx: TrialContext) -> list[tuple[str, Recipe]]:
    """The anchors of ``ctx``'s space (see the module docstring), as (tag, recipe): each
    axis' :meth:`~searchcomp.choices.axes.Axis.anchors`, every block alike."""
    from searchcomp.candidate import uniform_recipe
    from searchcomp.choices import axes
    from searchcomp.config import FLOAT_BITS

    allowed: dict[str, list] = {}
    for a in axes.all_axes():
        seen: dict = {}
        for b in ctx.blocks:
            for v in b.values().get(a.name, []):
                if v != a.neutral:
                    seen[v] = True
        allowed[a.name] = list(seen)

    def tag(values: dict) -> str:
        return "anchor " + " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in values.items())

    out: list[tuple[str, Recipe]] = []
    if ctx.int8_scheme is not None and 8 not in allowed.get("bits", []):
        out.append(("anchor bits=8 (int8)", Recipe({b.name: {"bits": 8} for b in ctx.blocks})))
    for a in axes.all_axes():
        for values in a.anchors(allowed):
            if values.get("bits") == FLOAT_BITS:
                continue
            out.append((tag(values), uniform_recipe(ctx.blocks, **values)))
    return out


def _no_lock() -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def enqueue_seeds(study: optuna.Study, ctx: TrialContext,
                  lock: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
                  n_trials: int | None = None) -> int:
    """Queue the base (every block ``keep``) and the space's uniform seed configurations
    that no done, queued or running trial of the study already has (so a seed interrupted
    by Ctrl-C is queued again), in that order and, with ``n_trials``, no more than the
    budget has room for (done, running and queued trials take room): nothing is left
    queued when the run ends, and a later run with a larger budget queues the rest. Under
    the study ``lock`` this is idempotent across workers started together. Returns how many
    were queued."""
    from searchcomp.candidate import uniform_recipe

    head_values = ctx.space.blocks.head
    seeds: list[tuple[str, Recipe]] = [("base", Recipe())]
    if ctx.space.search.anchors:
        seeds += anchor_recipes(ctx)
    for cfg in ctx.space.search.seed_configs:
        cfg = dict(cfg)
        head = str(cfg.pop("head", KEEP))
        tag = "uniform " + " ".join(f"{k}={v}" for k, v in {**cfg, "head": head}.items()
                                    if not (k == "head" and v == KEEP))
        seeds.append((tag, uniform_recipe(ctx.blocks, head=head, **cfg)))
    with (lock or _no_lock)():
        trials = study.get_trials(deepcopy=False)
        present = taken_keys(trials)
        room = None
        if n_trials is not None:
            room = n_trials - sum(1 for t in trials if is_done(t) or is_running_search(t)
                                  or t.state == TrialState.WAITING)
        seen = set()
        for tag, recipe in seeds:
            if room is not None and len(seen) >= room:
                break
            params = recipe_params(recipe, ctx.blocks, head_values)
            key = params_key(params)
            if key in seen or key in present:
                continue
            seen.add(key)
            kind = "anchor" if tag.startswith("anchor") else "seed"
            study.enqueue_trial(params, user_attrs={"strategy": kind, "tag": tag,
                                                    "anchor": kind == "anchor"})
    return len(seen)
