"""The Optuna samplers a search can use, by the name the space file and --sampler give, and the
wrapper that makes every proposal a new candidate.

Two things make a study's budget exact whatever drives it (one process, several workers, a
resume, Ray): each trial's sampler is seeded from the study seed and the trial's number
(:func:`derive_seed`), so two processes, or a resumed run, never replay the same sequence;
and :class:`DistinctSampler` asks the configured sampler again when it proposes choices a
trial of the study already has (finished, running or queued), so no slot goes to a copy.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from searchcomp.config import SAMPLERS
from searchcomp.errors import SearchcompError
from searchcomp.search.states import params_key, taken_keys

#: proposals asked of the configured sampler for one trial before drawing among the rest
TRIES = 20
#: uniform draws among the whole space before the untaken choices are enumerated
DRAWS = 200
#: largest space whose untaken configurations are enumerated when draws keep colliding
ENUMERATE_MAX = 200_000


def make_sampler(name: str, seed: int, n_trials: int, population: int | None,
                 space: dict[str, BaseDistribution] | None = None
                 ) -> optuna.samplers.BaseSampler:
    """The sampler called ``name``. Constraints reach NSGA-II/III, TPE and GP through
    ``trial.set_constraint`` (the random sampler ignores them). With ``space`` (every
    parameter of a recipe) it is wrapped in a :class:`DistinctSampler`, except the surrogate
    sampler, which is distinct by construction (it proposes only recipes no trial has,
    running and queued ones included) and keeps the predictor ``run_search`` attaches."""
    if name not in SAMPLERS:
        raise SearchcompError(f"--sampler: unknown sampler {name!r}; use one of "
                              f"{', '.join(SAMPLERS)}")
    if space is None or name == "surrogate":
        return _plain(name, seed, n_trials, population)
    return DistinctSampler(lambda s: _plain(name, s, n_trials, population), seed, space)


def _plain(name: str, seed: int, n_trials: int, population: int | None
           ) -> optuna.samplers.BaseSampler:
    pop = population or max(4, min(50, n_trials // 4))
    startup = min(10, max(2, n_trials // 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
        if name == "nsga3":
            return optuna.samplers.NSGAIIISampler(population_size=pop, seed=seed)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                              n_startup_trials=startup)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "surrogate":  # random until run_search attaches its predictor
        from searchcomp.search.surrogate import SurrogateSampler

        return SurrogateSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def derive_seed(seed: int, number: int, attempt: int = 0) -> int:
    """The sampler seed of trial ``number`` (and of a repeated ask, ``attempt``) in a study
    seeded ``seed``: reproducible, and distinct across trials, processes and resumes."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, number, attempt]).generate_state(1)[0])


class DistinctSampler(BaseSampler):
    """Proposes whole recipes through another sampler, never one a trial already has.

    The configured sampler is rebuilt for each trial with :func:`derive_seed`, asked for every
    parameter (relative, then independent sampling), and asked again — up to :data:`TRIES`
    times — while its proposal equals the choices of a finished, running or queued trial.
    Then one of the untaken configurations is drawn at random (uniform draws, then, for
    spaces up to :data:`ENUMERATE_MAX`, an exact enumeration). The search stops before
    asking when the space has no untaken configuration left (:func:`space_exhausted`).
    Queued trials keep the choices they were queued with.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int,
                 space: dict[str, BaseDistribution]) -> None:
        self._make, self._seed, self._space = make, seed, dict(space)

    @property
    def inner_name(self) -> str:
        """Class name of the configured sampler."""
        return type(self._make(0)).__name__

    def _inner(self, number: int, attempt: int = 0) -> BaseSampler:
        return self._make(derive_seed(self._seed, number, attempt))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if trial.system_attrs.get("fixed_params"):
            return {}  # a queued trial: its own choices
        others = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        taken = taken_keys(others)
        params: dict[str, Any] = {}
        for attempt in range(TRIES):
            params = self._propose(self._inner(trial.number, attempt), study, trial)
            if params_key(params) not in taken:
                return params
        rest = draw_untaken(self._space, taken,
                           np.random.default_rng(derive_seed(self._seed, trial.number, TRIES)))
        return rest if rest is not None else params

    def _propose(self, inner: BaseSampler, study: optuna.Study, trial: FrozenTrial
                 ) -> dict[str, Any]:
        space = {k: v for k, v in inner.infer_relative_search_space(study, trial).items()
                 if k in self._space}
        params = dict(inner.sample_relative(study, trial, space)) if space else {}
        for name, dist in self._space.items():
            if name not in params:
                params[name] = inner.sample_independent(study, trial, name, dist)
        return params

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        # parameters outside the recipe space (none today): the configured sampler's answer
        return self._inner(trial.number).sample_independent(study, trial, param_name,
                                                            param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner(trial.number).before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner(trial.number).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing to do: every trial's sampler is seeded from its number."""


def space_exhausted(space: dict[str, BaseDistribution], trials: list[FrozenTrial]) -> bool:
    """True when every configuration of ``space`` is taken by a trial (finished, running or
    queued), so no new proposal is possible."""
    return len(_in_space(space, taken_keys(trials))) >= space_size(space)


def space_size(space: dict[str, BaseDistribution]) -> int:
    """Number of configurations of a categorical ``space``."""
    return math.prod(len(_choices(d)) for d in space.values())


def _choices(dist: BaseDistribution) -> tuple:
    if not isinstance(dist, CategoricalDistribution):
        raise TypeError(f"a recipe space holds categorical parameters only, not {dist}")
    return tuple(dist.choices)


def _in_space(space: dict[str, BaseDistribution], keys: set[tuple]) -> set[tuple]:
    names = sorted(space)
    allowed = {n: set(_choices(space[n])) for n in names}
    return {k for k in keys if [n for n, _ in k] == names
            and all(v in allowed[n] for n, v in k)}


def draw_untaken(space: dict[str, BaseDistribution], taken: set[tuple],
                 rng: np.random.Generator) -> dict[str, Any] | None:
    """A configuration of ``space`` whose key is not in ``taken``, drawn at random; None when
    there is none (or, in a space too large to enumerate, none was found by chance)."""
    names = sorted(space)
    options = [_choices(space[n]) for n in names]
    for _ in range(DRAWS):
        params = {n: o[int(rng.integers(len(o)))] for n, o in zip(names, options, strict=True)}
        if params_key(params) not in taken:
            return params
    if space_size(space) > ENUMERATE_MAX:
        return None
    rest = [combo for combo in itertools.product(*options)
            if tuple(zip(names, combo, strict=True)) not in taken]
    if not rest:
        return None
    return dict(zip(names, rest[int(rng.integers(len(rest)))], strict=True))
