"""The greedy baseline of source 000, as trials in the same study as the search.

Rule: swap blocks to the depthwise-separable conv one at a time from the input side (top-down), fine-tune,
keep a swap if validation accuracy stays at or above the threshold, else revert; then a
bottom-up pass over the blocks still unswapped. Each step rebuilds the candidate from the base
with every kept swap plus the new one and gives it the same fine-tune as any search trial, so
the greedy path and the front are compared on the same budget. (The source tested on the test
split; this scores on validation, keeping test held out.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from searchcomp import choices
from searchcomp.candidate import Recipe
from searchcomp.search.runner import Searcher, recipe_params
from searchcomp.search.states import is_finished


def swap_value() -> str:
    """The conv choice the greedy rule swaps in: the one that declares ``greedy_swap``
    (source 000 swapped 3x3 convs for depthwise-separable ones)."""
    for c in choices.all_choices("conv"):
        if getattr(c, "greedy_swap", False) and not c.needs_arg:
            return c.name
    raise RuntimeError("no conv choice declares greedy_swap = True")


@dataclass
class GreedyStep:
    """One greedy decision."""

    step: int
    block: str
    direction: str  # "down" (top-down pass) or "up" (bottom-up pass)
    accuracy: float | None  # None: the trial failed or stopped early
    kept: bool
    trial: int | None = None


def greedy_rule(blocks: list[str], evaluate: Callable[[frozenset[str], str, int, str],
                                                       tuple[float | None, int | None]],
                threshold: float) -> tuple[list[str], list[GreedyStep]]:
    """Run the rule; ``evaluate(swapped, block, step, direction)`` returns (accuracy, trial)
    of the candidate whose ``swapped`` blocks are separable. Returns the kept blocks, in
    model order, and every step."""
    kept: set[str] = set()
    steps: list[GreedyStep] = []
    order = [(b, "down") for b in blocks]
    i = 0
    while i < len(order):
        block, direction = order[i]
        i += 1
        if block in kept:
            continue
        acc, trial = evaluate(frozenset(kept | {block}), block, len(steps), direction)
        ok = acc is not None and acc >= threshold
        if ok:
            kept.add(block)
        steps.append(GreedyStep(len(steps), block, direction, acc, ok, trial))
        if i == len(blocks) and direction == "down":  # end of the top-down pass
            order += [(b, "up") for b in reversed(blocks) if b not in kept]
    return [b for b in blocks if b in kept], steps


def run_greedy(searcher: Searcher, threshold: float) -> dict[str, Any]:
    """Run (or resume) the greedy baseline in ``searcher``'s study; returns its summary,
    which is also stored as the study's ``greedy`` user attribute."""
    ctx, study = searcher.ctx, searcher.study
    head_values = ctx.space.blocks.head
    swap = swap_value()
    eligible = [b.name for b in ctx.blocks if swap in b.choices.conv]

    def evaluate(swapped: frozenset[str], block: str, step: int, direction: str
                 ) -> tuple[float | None, int | None]:
        recipe = Recipe({b: {"conv": swap} for b in swapped})
        params = recipe_params(recipe, ctx.blocks, head_values)
        trial = _find_step(study, step, params)
        if trial is None:
            attrs = {"strategy": "greedy", "greedy_step": step, "greedy_block": block,
                     "greedy_pass": direction, "tag": f"greedy {step} {direction} {block}"}
            study.enqueue_trial(params, user_attrs=attrs)
            for _ in range(20):  # other queued trials (seeds, retries) may run first
                searcher.run_one()
                trial = _find_step(study, step, params)
                if trial is not None:
                    break
            else:
                raise RuntimeError(f"greedy step {step} was queued but never ran")
        if trial.state == TrialState.COMPLETE and "accuracy" in trial.user_attrs:
            return float(trial.user_attrs["accuracy"]), trial.number
        return None, trial.number

    searcher.open_progress(total=None)
    try:
        kept, steps = greedy_rule(eligible, evaluate, threshold)
    finally:
        searcher.close_progress()
    result_trial = next((s.trial for s in reversed(steps) if s.kept), None)
    summary = {"threshold": threshold, "swap": swap, "kept": kept,
               "steps": [asdict(s) for s in steps],
               "result_trial": result_trial}
    study.set_user_attr("greedy", summary)
    return summary


def _find_step(study: optuna.Study, step: int, params: dict[str, Any]
               ) -> optuna.trial.FrozenTrial | None:
    """The done greedy trial of ``step`` with exactly these choices (a rerun with another
    threshold takes other paths and must not reuse a different step's trial)."""
    for t in study.get_trials(deepcopy=False):
        if (t.user_attrs.get("strategy") == "greedy" and t.user_attrs.get("greedy_step") == step
                and t.params == params and is_finished(t)):
            return t
    return None
