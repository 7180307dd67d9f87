"""Every objective of any recipe, without fine-tuning: exact costs, predicted latency,
predicted accuracy with its uncertainty; and the candidate recipes worth scoring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from searchcomp.config import OBJECTIVES
from searchcomp.predict.accuracy import AccuracyModel
from searchcomp.predict.latency import LatencyCalibration
from searchcomp.predict.layout import Layout, row_keys
from searchcomp.predict.table import CostTable


@dataclass
class Predictor:
    """Predicts a recipe row's metrics: ``accuracy`` (mean) and ``accuracy_sd``, and each cost
    the table holds (params, size_mib, flops exactly; latency_ms from the latency table)."""

    layout: Layout
    costs: CostTable
    accuracy: AccuracyModel
    #: the base's measured metrics: costs are normalised by them
    base: dict[str, Any]
    latency: LatencyCalibration = field(default_factory=LatencyCalibration)

    def predict(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of each row (latency calibrated on the trials, see :meth:`fit`)."""
        rows = np.atleast_2d(rows)
        out = self.costs.predict(rows)
        if "latency_ms" in out:
            out["latency_ms"] = self.latency.apply(out["latency_ms"],
                                                   out.get("params", np.zeros(len(rows))))
        out["accuracy"], out["accuracy_sd"] = self.accuracy.predict(rows)
        return out

    def fit(self, rows: np.ndarray, accuracy: np.ndarray,
            latency_ms: np.ndarray | None = None) -> Predictor:
        """Correct the accuracy prior with measured trials (and calibrate the latency table
        on their measured latencies, when given)."""
        self.accuracy.fit(rows, accuracy)
        if latency_ms is not None and "latency_ms" in self.costs.metrics and len(rows):
            raw = self.costs.predict(rows)
            self.latency.fit(raw["latency_ms"], raw.get("params", np.zeros(len(rows))),
                             np.asarray(latency_ms, float))
        return self

    def normalized(self, metrics: dict[str, np.ndarray], objectives: list[str]) -> np.ndarray:
        """Objectives as columns, smaller is better: 1 - accuracy, each cost / the base's
        (as :func:`searchcomp.search.front.normalized`)."""
        cols = []
        for o in objectives:
            v = np.asarray(metrics[o], dtype=float)
            cols.append(1.0 - v if o == "accuracy" else v / max(float(self.base[o]), 1e-12))
        return np.stack(cols, axis=1)

    # -- candidates ------------------------------------------------------------------------
    def scalarized_rows(self, objectives: list[str], rng: np.random.Generator, n: int
                        ) -> np.ndarray:
        """``n`` recipes that each minimise a random positive weighting of the normalised
        objectives under the additive prior. The prior adds up over blocks and each block's
        cost change is taken with the others unchanged, so each block's best configuration is
        found on its own: these rows span the prior's predicted front."""
        n_c = self.layout.width
        blocks = self.accuracy.block_deltas
        rows = np.tile(self.layout.neutral_row(), (n, 1))
        weights = rng.dirichlet(np.ones(len(objectives)), size=n)
        for i in range(len(self.layout.blocks)):
            grid = None
            cols = []
            for o in objectives:
                if o == "accuracy":
                    continue
                grid, d = self.costs.block_deltas(i, o)
                cols.append((o, np.nan_to_num(d) / max(float(self.base[o]), 1e-12)))
            if grid is None:
                grid, _ = self.costs.block_deltas(i, self.costs.metrics[0])
            stacked = []
            for o in objectives:
                if o == "accuracy":
                    stacked.append(-sum(np.nan_to_num(blocks[i][k][grid[:, k]])
                                        for k in range(n_c)))
                else:
                    stacked.append(dict(cols)[o])
            score = weights @ np.stack(stacked, axis=0)  # (n, configs)
            score += rng.random(score.shape) * 1e-9  # break ties at random
            rows[:, n_c * i:n_c * i + n_c] = grid[np.argmin(score, axis=1)]
        head_cols = []
        for o in objectives:
            if o == "accuracy":
                head_cols.append(-np.nan_to_num(self.accuracy.head_deltas))
            else:
                head_cols.append(np.nan_to_num(self.costs.head_deltas(o))
                                 / max(float(self.base[o]), 1e-12))
        rows[:, -1] = np.argmin(weights @ np.stack(head_cols, axis=0), axis=1)
        return rows

    def search(self, score: Callable[[np.ndarray], np.ndarray], objectives: list[str],
               rng: np.random.Generator, *, seeds: np.ndarray | None = None,
               exclude: set[bytes] | None = None, n_random: int = 600,
               n_scalarized: int = 300, rounds: int = 3, keep: int = 16,
               children: int = 24) -> tuple[np.ndarray, np.ndarray]:
        """Rows that score well, best first, with their scores: a pool of random rows, the
        prior's front and ``seeds`` (e.g. the measured front), then ``rounds`` of local
        search around the best ``keep`` (each mutated into ``children`` rows). Rows in
        ``exclude`` (as :func:`row_keys`) are never returned."""
        exclude = exclude or set()
        parts = [self.layout.random_rows(rng, n_random),
                 self.scalarized_rows(objectives, rng, n_scalarized)]
        if seeds is not None and len(seeds):
            seeds = np.atleast_2d(seeds)
            parts += [seeds, self.layout.mutate(np.repeat(seeds, 8, axis=0), rng)]
        pool = _unique(np.concatenate(parts), exclude)
        scores = score(pool) if len(pool) else np.zeros(0)
        for _ in range(rounds):
            if not len(pool):
                break
            top = pool[np.argsort(-scores)[:keep]]
            kids = _unique(self.layout.mutate(np.repeat(top, children, axis=0), rng),
                           exclude | set(row_keys(pool)))
            if not len(kids):
                break
            pool = np.concatenate([pool, kids])
            scores = np.concatenate([scores, score(kids)])
        order = np.argsort(-scores, kind="stable")
        return pool[order], scores[order]


def _unique(rows: np.ndarray, exclude: set[bytes]) -> np.ndarray:
    keys = row_keys(rows)
    seen: set[bytes] = set()
    keep = []
    for i, k in enumerate(keys):
        if k not in exclude and k not in seen:
            seen.add(k)
            keep.append(i)
    return rows[keep] if keep else rows[:0]


def check_objectives(objectives: list[str], costs: CostTable) -> None:
    """Every objective is predictable: accuracy, or a cost the table holds."""
    missing = [o for o in objectives if o not in OBJECTIVES or (
        o != "accuracy" and o not in costs.metrics)]
    if missing:
        raise ValueError(f"no prediction for objective(s) {missing}")
