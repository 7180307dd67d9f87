"""A region of the objective space: upper limits on costs and a floor on accuracy.

``run --target "size_mib<=2,latency_ms<=5"`` spends the trials there, ``front --max-size-mib``
asks what is best there; the space's constraints are one too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from searchcomp.errors import SearchcompError

COSTS = ("params", "size_mib", "latency_ms", "flops")
_TERM = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Budget:
    """Costs at most ``max_costs``, validation accuracy at least ``min_accuracy``."""

    max_costs: dict[str, float] = field(default_factory=dict)
    min_accuracy: float | None = None

    @classmethod
    def parse(cls, text: str, option: str = "--target") -> Budget:
        """``"size_mib<=2,latency_ms<=5,accuracy>=0.7"`` (any of params, size_mib,
        latency_ms, flops with ``<=``; accuracy with ``>=``)."""
        costs: dict[str, float] = {}
        floor = None
        for term in filter(None, (t.strip() for t in text.split(","))):
            m = _TERM.match(term)
            if not m:
                raise SearchcompError(f"{option}: cannot read {term!r}; write terms like "
                                      "size_mib<=2,latency_ms<=5,accuracy>=0.7")
            key, op, raw = m.groups()
            try:
                value = float(raw)
            except ValueError:
                raise SearchcompError(f"{option}: {raw!r} in {term!r} is not a number") from None
            if key == "accuracy" and op == ">=" and 0 <= value <= 1:
                floor = value
            elif key in COSTS and op == "<=" and value > 0:
                costs[key] = value
            else:
                raise SearchcompError(
                    f"{option}: {term!r} is not a limit; use {'/'.join(COSTS)} <= a positive "
                    "number, or accuracy >= a number in [0, 1]")
        if not costs and floor is None:
            raise SearchcompError(f"{option}: give at least one limit, e.g. size_mib<=2")
        return cls(costs, floor)

    def merged(self, other: Budget | None) -> Budget:
        """Both regions' intersection."""
        if other is None:
            return self
        costs = dict(self.max_costs)
        for k, v in other.max_costs.items():
            costs[k] = min(v, costs.get(k, v))
        floors = [f for f in (self.min_accuracy, other.min_accuracy) if f is not None]
        return Budget(costs, max(floors) if floors else None)

    def reference(self, objectives: list[str], base: dict[str, Any]) -> np.ndarray:
        """The hypervolume reference point in normalised objectives (1 - accuracy, cost /
        base): the base's costs and accuracy 0, tightened by the limits."""
        ref = []
        for o in objectives:
            if o == "accuracy":
                ref.append(1.0 - (self.min_accuracy or 0.0))
            else:
                limit = self.max_costs.get(o)
                ref.append(min(1.0, limit / float(base[o])) if limit is not None else 1.0)
        return np.array(ref)

    def inside(self, metrics: dict[str, Any]) -> np.ndarray:
        """Which rows' metrics (arrays, or scalars for one row) are inside; a missing or NaN
        cost is outside. Accuracy is checked only when ``metrics`` has it."""
        arrays = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in metrics.items()
                  if k in (*COSTS, "accuracy")}
        n = max((len(v) for v in arrays.values()), default=1)
        ok = np.ones(n, dtype=bool)
        for k, limit in self.max_costs.items():
            ok &= np.nan_to_num(arrays.get(k, np.full(n, np.nan)), nan=np.inf) <= limit
        if self.min_accuracy is not None and "accuracy" in arrays:
            ok &= arrays["accuracy"] >= self.min_accuracy
        return ok

    def describe(self) -> str:
        """``size_mib <= 2, accuracy >= 0.7``."""
        parts = [f"{k} <= {v:g}" for k, v in self.max_costs.items()]
        if self.min_accuracy is not None:
            parts.append(f"accuracy >= {self.min_accuracy:g}")
        return ", ".join(parts) or "no limit"


def constraint_budget(space: Any, base: dict[str, Any]) -> Budget:
    """The space's constraints as a region (the accuracy drop against ``base``)."""
    c = space.constraints
    costs = {k: float(v) for k, v in (("params", c.max_params), ("size_mib", c.max_size_mib),
                                       ("latency_ms", c.max_latency_ms)) if v is not None}
    floor = None if c.max_accuracy_drop is None else float(base["accuracy"]) - c.max_accuracy_drop
    return Budget(costs, floor)
