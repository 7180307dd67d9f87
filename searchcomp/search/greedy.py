"""The greedy baseline of source 000, as trials in the same study as the search.

Rule: swap blocks to the depthwise-separable conv one at a time from the input side
(top-down), fine-tune, keep a swap if validation accuracy stays at or above the threshold,
else revert; then a bottom-up pass over the blocks still unswapped. As in the source, the
form is cumulative: a kept swap keeps its fine-tuned weights and the next step starts from
that model (each step's fine-tune is the same as any search trial's, so the greedy path and
the front are compared on the same budget). The ``rebuild`` form instead builds every step
from the base with the kept swaps and the new one, losing the earlier steps' fine-tuning.
(The source tested on the test split; this scores on validation, keeping test held out.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from searchcomp import choices
from searchcomp.candidate import Recipe, build
from searchcomp.errors import SearchcompError
from searchcomp.search.runner import Searcher, recipe_params
from searchcomp.search.states import is_finished
from searchcomp.search.trial import TrialContext


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
                threshold: float, on_keep: Callable[[GreedyStep, frozenset[str]], None] | None
                = None) -> tuple[list[str], list[GreedyStep]]:
    """Run the rule; ``evaluate(swapped, block, step, direction)`` returns (accuracy, trial)
    of the candidate whose ``swapped`` blocks are separable; ``on_keep(step, kept)`` hears of
    each kept swap before the next step. Returns the kept blocks, in model order, and every
    step."""
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
        steps.append(GreedyStep(len(steps), block, direction, acc, ok, trial))
        if ok:
            kept.add(block)
            if on_keep:
                on_keep(steps[-1], frozenset(kept))
        if i == len(blocks) and direction == "down":  # end of the top-down pass
            order += [(b, "up") for b in reversed(blocks) if b not in kept]
    return [b for b in blocks if b in kept], steps


FORMS = ("cumulative", "rebuild")


def run_greedy(searcher: Searcher, threshold: float, form: str = "cumulative"
               ) -> dict[str, Any]:
    """Run (or resume) the greedy baseline in ``searcher``'s study; returns its summary,
    which is also stored as the study's ``greedy`` user attribute. ``form``: ``cumulative``
    (each step starts from the last kept step's fine-tuned model) or ``rebuild`` (each step
    starts from the base)."""
    if form not in FORMS:
        raise ValueError(f"greedy form must be one of {FORMS}, got {form!r}")
    ctx, study = searcher.ctx, searcher.study
    head_values = ctx.space.blocks.head
    swap = swap_value()
    eligible = [b.name for b in ctx.blocks if swap in b.allowed("conv")]
    # the model the next step starts from: the last kept step's, fine-tuned (None: the base)
    current: dict[str, Any] = {"model": None, "recipe": Recipe()}

    def start_from(trial) -> tuple[Any, Recipe] | None:
        if form != "cumulative" or current["model"] is None or \
                trial.user_attrs.get("strategy") != "greedy":
            return None
        return current["model"], current["recipe"]

    def on_keep(step: GreedyStep, kept: frozenset[str]) -> None:
        if form != "cumulative" or step.trial is None:
            return
        recipe = Recipe({b: {"conv": swap} for b in kept})
        current["model"] = load_trial_model(ctx, study, step.trial, recipe)
        current["recipe"] = recipe

    def evaluate(swapped: frozenset[str], block: str, step: int, direction: str
                 ) -> tuple[float | None, int | None]:
        recipe = Recipe({b: {"conv": swap} for b in swapped})
        params = recipe_params(recipe, ctx.blocks, head_values)
        trial = _find_step(study, step, params, form)
        if trial is None:
            attrs = {"strategy": "greedy", "greedy_step": step, "greedy_block": block,
                     "greedy_pass": direction, "greedy_form": form,
                     "tag": f"greedy {step} {direction} {block}"}
            study.enqueue_trial(params, user_attrs=attrs)
            for _ in range(20):  # other queued trials (seeds, retries) may run first
                searcher.run_one()
                trial = _find_step(study, step, params, form)
                if trial is not None:
                    break
            else:
                raise RuntimeError(f"greedy step {step} was queued but never ran")
        if trial.state == TrialState.COMPLETE and "accuracy" in trial.user_attrs:
            return float(trial.user_attrs["accuracy"]), trial.number
        return None, trial.number

    searcher.open_progress(total=None)
    searcher.start_from = start_from
    try:
        kept, steps = greedy_rule(eligible, evaluate, threshold, on_keep)
    finally:
        searcher.start_from = None
        searcher.close_progress()
    result_trial = next((s.trial for s in reversed(steps) if s.kept), None)
    summary = {"threshold": threshold, "form": form, "swap": swap, "kept": kept,
               "steps": [asdict(s) for s in steps],
               "result_trial": result_trial}
    study.set_user_attr("greedy", summary)
    return summary


def _find_step(study: optuna.Study, step: int, params: dict[str, Any], form: str
               ) -> optuna.trial.FrozenTrial | None:
    """The done greedy trial of ``step`` with exactly these choices, in this form (a rerun
    with another threshold takes other paths and must not reuse a different step's trial)."""
    for t in study.get_trials(deepcopy=False):
        if (t.user_attrs.get("strategy") == "greedy" and t.user_attrs.get("greedy_step") == step
                and t.user_attrs.get("greedy_form", "rebuild") == form
                and t.params == params and is_finished(t)):
            return t
    return None


def load_trial_model(ctx: TrialContext, study: optuna.Study, number: int, recipe: Recipe
                     ) -> nn.Module:
    """Trial ``number``'s fine-tuned model: its architecture rebuilt from the base and the
    recipe (no init), and the weights the trial saved."""
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    path = Path(str(t.user_attrs.get("weights", "")))
    if not path.is_file():
        raise SearchcompError(f"greedy: the weights of trial {number} are gone ({path}); the "
                              "cumulative greedy starts each step from the last kept one's, "
                              "so it cannot resume: use a new --study")
    built = build(ctx.base, recipe, ctx.blocks, ctx.head_name, ctx.calib, init=False,
                  prune_round_to=ctx.space.blocks.prune_round_to,
                  int8=ctx.scheme_for(t.user_attrs))
    built.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return built.model.to(ctx.compute.device).eval()
