"""The Optuna samplers a search can use, by the name the space file and --sampler give."""

from __future__ import annotations

import warnings

import optuna

from searchcomp.config import SAMPLERS
from searchcomp.errors import SearchcompError


def make_sampler(name: str, seed: int, n_trials: int, population: int | None
                 ) -> optuna.samplers.BaseSampler:
    """The sampler called ``name``. Constraints reach NSGA-II/III, TPE and GP through
    ``trial.set_constraint`` (the random sampler ignores them)."""
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
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "surrogate":  # random until run_search attaches its predictor
        from searchcomp.search.surrogate import SurrogateSampler

        return SurrogateSampler(seed=seed)
    raise SearchcompError(f"--sampler: unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
