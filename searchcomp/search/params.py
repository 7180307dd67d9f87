"""A recipe as Optuna parameters: one categorical parameter per block and axis, one for the
head (define-by-run), and back."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import Trial

from searchcomp.candidate import Recipe
from searchcomp.choices import axes
from searchcomp.config import KEEP
from searchcomp.models import Block

__all__ = ["block_params", "param_name", "recipe_params", "recipe_space",
           "record_prediction", "sample_recipe"]


def param_name(block: str, choice: str) -> str:
    """The Optuna parameter of a block's choice, e.g. ``layer1.0/conv``."""
    return f"{block}/{choice}"


def block_params(b: Block) -> list[str]:
    """The axes that are Optuna parameters of block ``b``: every ``always`` axis (conv,
    prune, bits: the parameters of every study so far, even with one value) and any other
    with more than one value here."""
    return [a.name for a in axes.all_axes() if a.always or len(b.allowed(a.name)) > 1]


def recipe_space(blocks: list[Block], head_values: tuple[str, ...]
                 ) -> dict[str, BaseDistribution]:
    """Every Optuna parameter of a recipe with its distribution (what :func:`sample_recipe`
    suggests)."""
    space: dict[str, BaseDistribution] = {}
    for b in blocks:
        for c in block_params(b):
            space[param_name(b.name, c)] = CategoricalDistribution(list(b.allowed(c)))
    space["head"] = CategoricalDistribution(list(head_values))
    return space


def sample_recipe(trial: Trial, blocks: list[Block], head_values: tuple[str, ...]) -> Recipe:
    """Define-by-run: one categorical parameter per block and axis (see
    :func:`block_params`), and one for the head."""
    chosen = {}
    for b in blocks:
        chosen[b.name] = {c: trial.suggest_categorical(param_name(b.name, c),
                                                       list(b.allowed(c)))
                          for c in block_params(b)}
    head = trial.suggest_categorical("head", list(head_values))
    return Recipe(chosen, str(head))


def recipe_params(recipe: Recipe, blocks: list[Block], head_values: tuple[str, ...]
                  ) -> dict[str, Any]:
    """Optuna parameters that make :func:`sample_recipe` return ``recipe``.

    A value a block does not allow falls back to neutral (keep / 0 / 32 / ...) when that is
    allowed, else to the block's first value.
    """
    params: dict[str, Any] = {}
    for b in blocks:
        for c in block_params(b):
            allowed = list(b.allowed(c))
            v = recipe.choice(b.name, c)
            if v not in allowed:
                neutral = axes.neutral(c)
                v = neutral if neutral in allowed else allowed[0]
            params[param_name(b.name, c)] = v
    head = recipe.head if recipe.head in head_values else (
        KEEP if KEEP in head_values else head_values[0])
    params["head"] = head
    return params


def record_prediction(study: optuna.Study, trial: Trial) -> None:
    """Store what a predicting sampler (the surrogate) expected of ``trial`` on it, once its
    choices are sampled: the sampler keeps it (a sampler sees only frozen trials)."""
    from searchcomp.search.surrogate import PREDICTED

    take = getattr(study.sampler, "take_prediction", None)
    info = take(trial.number) if take is not None else None
    if info is not None:
        trial.set_user_attr(PREDICTED, info)
