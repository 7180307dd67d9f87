"""``--sampler surrogate``: an Optuna sampler that proposes whole recipes by expected
hypervolume improvement of a predicted front.

The predictor (:class:`searchcomp.predict.predictor.Predictor`) knows every candidate's costs
exactly (latency from the per-block table) and predicts its validation accuracy from the
sensitivity table, corrected by the finished trials. Each new trial gets the recipe, never
run before, with the largest EHVI over the front of the measured trials (plus the predicted
points of trials still running elsewhere). Being a ``BaseSampler`` it works with every
storage, resume, several workers, the Ray backend (whose searcher asks the study) and the
dashboard. Until
:meth:`SurrogateSampler.attach` gives it a predictor, it samples at random.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from searchcomp.predict.budget import COSTS, Budget
from searchcomp.predict.layout import Layout
from searchcomp.predict.predictor import Predictor
from searchcomp.search.acquisition import expected_improvement
from searchcomp.search.front import pareto_front

#: user attribute holding what the predictor expected of a trial before it ran
PREDICTED = "predicted"


class SurrogateSampler(BaseSampler):
    """Proposes whole recipes by expected hypervolume improvement (see the module doc)."""

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self.predictor: Predictor | None = None
        self.objectives: list[str] = []
        self.region = Budget()
        self._params: list[str] = []
        #: what was predicted for each trial it proposed, by trial number, until the driver
        #: stores it on the trial (:meth:`take_prediction`)
        self._predicted: dict[int, dict[str, Any]] = {}

    def attach(self, predictor: Predictor, objectives: list[str], region: Budget | None = None,
               params: list[str] | None = None) -> SurrogateSampler:
        """Give the sampler its predictor and objectives; ``params`` are the Optuna parameter
        names of the layout's columns (default ``<block>/<choice>`` and ``head``)."""
        lay = predictor.layout
        self.predictor, self.objectives = predictor, list(objectives)
        self.region = region or Budget()
        self._params = params or [f"{b}/{c}" for b, c in lay.columns()] + ["head"]
        return self

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    # -- the BaseSampler contract -----------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        if self.predictor is None:
            return {}
        lay = self.predictor.layout
        values = [v for vs in lay.values for v in vs] + [lay.head]
        return {p: CategoricalDistribution(list(v))
                for p, v in zip(self._params, values, strict=True) if len(v) > 1}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self.predictor is None or not search_space:
            return {}
        row, info = self.propose(study, trial)
        if row is None:
            return {}  # every recipe has run: fall back to independent sampling
        self._predicted[trial.number] = info
        params = self._row_params(row)
        return {k: v for k, v in params.items() if k in search_space}

    def take_prediction(self, number: int) -> dict[str, Any] | None:
        """What was predicted for trial ``number`` (once; None if it proposed nothing). A
        sampler sees frozen trials only, so the driver holding the live trial stores it as
        the ``predicted`` user attribute (:func:`searchcomp.search.runner.record_prediction`)."""
        return self._predicted.pop(number, None)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    # -- rows <-> params -------------------------------------------------------------------
    def _row_params(self, row: np.ndarray) -> dict[str, Any]:
        lay = self.predictor.layout
        values = [v for vs in lay.values for v in vs] + [lay.head]
        return {p: v[int(i)] for p, v, i in zip(self._params, values, row, strict=True)}

    def _params_row(self, params: dict[str, Any]) -> np.ndarray | None:
        lay = self.predictor.layout
        values = [v for vs in lay.values for v in vs] + [lay.head]
        row = []
        for p, v in zip(self._params, values, strict=True):
            if p in params:
                if params[p] not in v:
                    return None
                row.append(v.index(params[p]))
            elif len(v) == 1:
                row.append(0)
            else:
                return None
        return np.array(row, dtype=np.int64)

    # -- proposing -------------------------------------------------------------------------
    def observations(self, study: optuna.Study, exclude_number: int | None = None
                     ) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, set[bytes]]:
        """From the study: rows and measured metrics (with ``feasible``) of complete trials,
        rows of trials still running, and the keys of every recipe run, running or queued.
        Candidates the rungs strategy stopped early come as metrics with ``stopped: True``
        and their full accuracy estimated from their rung's
        (:func:`~searchcomp.search.rungs.full_accuracy_estimates`): the accuracy model
        learns from them, the front does not hold them."""
        from searchcomp.search.rungs import full_accuracy_estimates

        done, metrics, running, seen = [], [], [], set()
        trials = study.get_trials(deepcopy=False)
        estimates = full_accuracy_estimates(trials)
        for t in trials:
            if t.number == exclude_number:
                continue
            params = t.params or t.system_attrs.get("fixed_params") or {}
            row = self._params_row(params)
            if row is None:
                continue
            seen.add(row.tobytes())
            a = t.user_attrs
            if t.state == TrialState.COMPLETE and all(o in a for o in self.objectives):
                done.append(row)
                metrics.append({**{k: float(a[k]) for k in {*self.objectives, "accuracy",
                                                            "latency_ms"} if k in a},
                                "feasible": bool(a.get("feasible", True))})
            elif t.state == TrialState.RUNNING:
                running.append(row)
            elif t.number in estimates:
                done.append(row)
                metrics.append({"accuracy": estimates[t.number], "stopped": True,
                                "feasible": True})
        n = self.predictor.layout.n_columns
        return (np.array(done, dtype=np.int64).reshape(-1, n), metrics,
                np.array(running, dtype=np.int64).reshape(-1, n), seen)

    def propose(self, study: optuna.Study, trial: FrozenTrial | None = None
                ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The unseen recipe row with the largest EHVI, and what was predicted for it."""
        pred, obj = self.predictor, self.objectives
        done, metrics, running, seen = self.observations(
            study, trial.number if trial is not None else None)
        pred.fit(done, np.array([m.get("accuracy", np.nan) for m in metrics]),
                 np.array([m.get("latency_ms", np.nan) for m in metrics]))
        ref = self.region.reference(obj, pred.base)
        rows_m = [{**m, "i": i} for i, m in enumerate(metrics) if not m.get("stopped")]
        front_rows = pareto_front(rows_m, obj)
        front = [[(1.0 - r[o]) if o == "accuracy" else r[o] / float(pred.base[o]) for o in obj]
                 for r in front_rows]
        if len(running):  # believe the running trials' predicted means (spreads workers out)
            p = pred.predict(running)
            front += pred.normalized(p, obj).tolist()
        front_arr = np.array(front, dtype=float).reshape(-1, len(obj))
        uncertain = "accuracy" in obj
        acc_col = obj.index("accuracy") if uncertain else None
        order = ([acc_col] + [i for i in range(len(obj)) if i != acc_col]) if uncertain \
            else list(range(len(obj)))

        def score(rows: np.ndarray) -> np.ndarray:
            p = pred.predict(rows)
            cand = pred.normalized(p, obj)[:, order]
            ehvi = expected_improvement(front_arr[:, order], cand,
                                        p["accuracy_sd"] if uncertain else None, ref[order])
            return np.where(self.region.inside(_costs(p)), ehvi, -1.0)

        seeds = done[[r["i"] for r in front_rows]] if front_rows else None
        rows, scores = pred.search(score, obj, self._rng, seeds=seeds, exclude=seen)
        if not len(rows):
            return None, {}
        best = rows[0]
        if scores[0] <= 0:  # nothing is expected to improve the front: explore the unsure
            p = pred.predict(rows)
            inside = self.region.inside(_costs(p))
            cand = np.flatnonzero(inside) if inside.any() else np.arange(len(rows))
            best = rows[cand[np.argmax(p["accuracy_sd"][cand])]]
        p = pred.predict(best[None])
        info = {k: float(v[0]) for k, v in p.items()}
        info.update({"ehvi": float(max(scores[0], 0.0)), "trained_on": len(metrics),
                     "sampler": "surrogate"})
        return best, info


def _costs(metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in metrics.items() if k in COSTS}


def layout_params(layout: Layout, param_name) -> list[str]:
    """The Optuna parameter names of a layout's columns, given the runner's ``param_name``."""
    return [param_name(b, c) for b, c in layout.columns()] + ["head"]
