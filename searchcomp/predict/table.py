"""A metric of any recipe row as a sum of small tables: the base's figure plus, for each
factor, the entry its columns' values pick.

A factor is a set of layout columns (block x axis, or the head) and an array indexed by
their value indices. The shape-only costs have one factor per group of layers that the same
columns change (:class:`searchcomp.predict.costs.ShapeCosts`): exact for any recipe, however
the blocks are coupled (a plain CNN's pruning resizes the next block's conv, a stage's
residual width the stem and the next stage). The latency table has one factor per block
(its own axes) and one per stage-wide value (see :mod:`.latency`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from searchcomp.predict.layout import Layout


@dataclass
class Factor:
    """``values[metric]`` indexed by the value indices of ``columns`` (in order)."""

    columns: tuple[int, ...]
    values: dict[str, np.ndarray]


@dataclass
class CostTable:
    """Metrics of recipe rows: ``base`` plus one entry of every factor. Holds params,
    size_mib, flops (shape-only) and, merged with a latency table, latency_ms."""

    layout: Layout
    base: dict[str, float]
    factors: list[Factor] = field(default_factory=list)
    _deltas: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def metrics(self) -> list[str]:
        """The metrics it predicts."""
        return list(self.base)

    def predict(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric of each recipe row."""
        rows = np.atleast_2d(rows)
        out = {k: np.full(len(rows), float(v)) for k, v in self.base.items()}
        for f in self.factors:
            idx = tuple(rows[:, c] for c in f.columns)
            for k, arr in f.values.items():
                out[k] += arr[idx]
        return out

    def block_deltas(self, i: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Every configuration of block ``i`` (rows of its columns' value indices, the rest
        at the neutral row) and its change of ``metric``: what each block's best
        configuration is found from on its own (:meth:`Predictor.scalarized_rows`)."""
        if (i, metric) in self._deltas:
            return self._deltas[(i, metric)]
        lay = self.layout
        dims = [len(v) for v in lay.values[i]]
        grid = np.stack(np.meshgrid(*[np.arange(d) for d in dims], indexing="ij"),
                        -1).reshape(-1, len(dims))
        rows = np.tile(lay.neutral_row(), (len(grid), 1))
        rows[:, lay.width * i:lay.width * (i + 1)] = grid
        base = self.predict(lay.neutral_row()[None])[metric][0]
        self._deltas[(i, metric)] = grid, self.predict(rows)[metric] - base
        return self._deltas[(i, metric)]

    def head_deltas(self, metric: str) -> np.ndarray:
        """The change of ``metric`` of each head value (everything else neutral)."""
        rows = np.tile(self.layout.neutral_row(), (len(self.layout.head), 1))
        rows[:, -1] = np.arange(len(self.layout.head))
        out = self.predict(rows)[metric]
        return out - self.predict(self.layout.neutral_row()[None])[metric][0]

    def merged(self, other: CostTable) -> CostTable:
        """Both tables' metrics in one (same layout)."""
        return CostTable(self.layout, {**self.base, **other.base},
                         [*self.factors, *other.factors])
