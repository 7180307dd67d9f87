"""Validation accuracy of any recipe: an additive prior from the sensitivity table, corrected
by a Gaussian process (scikit-learn) fitted on the finished trials.

Small changes add up (HAWQ, AIMET and ModelOpt's tables rest on that); many changes at once
do not, and the fine-tune a trial gets is longer than a profile row's recovery. So the
prior is ``reference + sum of the recipe's single-change deltas``, and a GP learns the
residual of the measured trials from a few summary features of the recipe (the deltas summed
per kind of change, the share of changed choices). Where no trial is near, the prediction
falls back to the prior with a wide interval.
"""

from __future__ import annotations

import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from searchcomp.predict.layout import Layout
from searchcomp.predict.sensitivity import Sensitivity
from searchcomp.predict.table import CostTable

#: trials needed before the residual model is fitted
MIN_FIT = 3
#: the measurement noise assumed before any trial tells (a few hundred validation images)
NOISE_SD = 0.015
#: how much of a recipe's summed prior change the prior alone may be off by (one sd)
PRIOR_REL_SD = 0.5
#: the change assumed for a value the table lacks (one sd), with zero mean
UNKNOWN_SD = 0.05


def _lbfgs(obj_func, initial_theta, bounds):
    """scikit-learn's default optimiser with a bounded number of iterations (the fit runs
    before every proposal; a few dozen iterations from the last fit's optimum suffice)."""
    from scipy.optimize import minimize

    res = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds,
                   options={"maxiter": 60})
    return res.x, res.fun


class AccuracyModel:
    """Predicts validation accuracy (mean and sd) of layout rows."""

    def __init__(self, layout: Layout, sensitivity: Sensitivity | None,
                 base_accuracy: float, seed: int = 0, costs: CostTable | None = None) -> None:
        self.layout = layout
        self.seed = seed
        self.costs = costs
        ref = sensitivity.reference if sensitivity is not None else None
        self.reference = float(base_accuracy if ref is None else ref)
        if sensitivity is not None:
            blocks, head = sensitivity.prior(layout)
            err_blocks, err_head = sensitivity.prior(layout, "error")
        else:
            blocks = [[np.full(len(v), np.nan) for v in vs] for vs in layout.values]
            head = np.full(len(layout.head), np.nan)
            err_blocks, err_head = blocks, head
        #: per block, per choice: each value's accuracy change (NaN: not in the table)
        self.block_deltas = blocks
        #: each head value's accuracy change
        self.head_deltas = head
        self._errors = (err_blocks, err_head)
        self._neutral = layout.neutral_row()
        self._gp = None
        self._kernel = None
        self._offset = 0.0
        self.trained_on = 0
        probe = layout.random_rows(np.random.default_rng(0), 256)
        self._scale = np.maximum(np.abs(self._raw_features(probe)[0]).max(axis=0), 1e-6)

    @staticmethod
    def _sums(rows: np.ndarray, blocks: list[list[np.ndarray]], head: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the values summed per axis (conv, prune, bits, ...) and the head's, and
        how many are unknown (NaN, counted as 0 in the sums)."""
        n = len(blocks[0]) if blocks else 0
        parts = np.zeros((len(rows), n + 1))
        unknown = np.zeros(len(rows))
        for i, per in enumerate(blocks):
            for k in range(n):
                d = per[k][rows[:, n * i + k]]
                unknown += np.isnan(d)
                parts[:, k] += np.nan_to_num(d)
        d = head[rows[:, -1]]
        unknown += np.isnan(d)
        parts[:, n] = np.nan_to_num(d)
        return parts, unknown

    def _raw_features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.atleast_2d(rows)
        deltas, unknown = self._sums(rows, self.block_deltas, self.head_deltas)
        errors, _ = self._sums(rows, *self._errors)
        changed = (rows != self._neutral).mean(axis=1)
        size = np.zeros(len(rows))
        if self.costs is not None and "params" in self.costs.metrics:
            params = self.costs.predict(rows)["params"]
            size = np.log(np.maximum(params, 1.0) / max(float(self.costs.base["params"]), 1.0))
        f = np.column_stack([deltas.sum(axis=1), errors, changed, size])
        return f, unknown

    def features(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What the residual model sees of a row, scaled to about [-1, 1]: the prior's
        summed accuracy change, the output errors summed per axis and the head's, the share
        of changed choices and the log of the params ratio to the base; and the count of
        changes the table does not know."""
        f, unknown = self._raw_features(rows)
        return f / self._scale, unknown

    def prior(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The additive prior's mean and sd."""
        rows = np.atleast_2d(rows)
        deltas, unknown = self._sums(rows, self.block_deltas, self.head_deltas)
        total = deltas.sum(axis=1)
        sd = np.sqrt(NOISE_SD ** 2 + (PRIOR_REL_SD * total) ** 2 + unknown * UNKNOWN_SD ** 2)
        return self.reference + total, sd

    def fit(self, rows: np.ndarray, accuracy: np.ndarray) -> AccuracyModel:
        """Fit the residual model on finished trials (rows and measured accuracies)."""
        rows = np.atleast_2d(np.asarray(rows, dtype=np.int64))
        y = np.asarray(accuracy, dtype=float)
        rows, y = rows[np.isfinite(y)], y[np.isfinite(y)]
        self.trained_on = len(y)
        self._gp = None
        if not len(y):
            self._offset = 0.0
            return self
        mean, _ = self.prior(rows)
        resid = y - mean
        self._offset = float(np.mean(resid))
        if len(y) < MIN_FIT:
            return self
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        f, _ = self.features(rows)
        # start from the last fit's hyperparameters: one optimiser run then suffices
        kernel = self._kernel or (
            ConstantKernel(1.0, (1e-3, 1e3))
            * Matern(length_scale=np.full(f.shape[1], 0.3), length_scale_bounds=(1e-2, 1e2),
                     nu=2.5)
            + WhiteKernel(NOISE_SD ** 2, (1e-6, 1e-1)))
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, optimizer=_lbfgs,
                                      n_restarts_optimizer=0 if self._kernel else 2,
                                      random_state=self.seed)
        # tiny matrices: BLAS threads only contend (with the fine-tunes, on a shared CPU)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")  # bounds reached on tiny data sets are fine
            gp.fit(f, resid)
        self._gp = gp
        self._kernel = gp.kernel_
        return self

    def predict(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sd of each row's validation accuracy."""
        rows = np.atleast_2d(rows)
        mean, sd = self.prior(rows)
        if self._gp is None:
            return np.clip(mean + self._offset, 0.0, 1.0), sd
        f, unknown = self.features(rows)
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            r_mean, r_sd = self._gp.predict(f, return_std=True)
        sd = np.sqrt(r_sd ** 2 + unknown * UNKNOWN_SD ** 2)
        return np.clip(mean + r_mean, 0.0, 1.0), sd
