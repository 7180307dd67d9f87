"""The discrete search space as plain arrays: every recipe is one row of value indices.

Column ``A * i + k`` holds block ``i``'s value of axis ``axes[k]`` (the registered choice
axes: conv, prune, bits, width, ...; ``A`` of them) as an index into that block's allowed
values, and the last column the head's. Predictors work on such rows, so thousands of
candidate recipes are scored with a few array operations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from searchcomp.choices import axes as registry
from searchcomp.config import KEEP


@dataclass(frozen=True)
class Layout:
    """Blocks in model order with their allowed values, and the head's values."""

    blocks: tuple[str, ...]
    #: per block, per axis in :attr:`axes`: the allowed values
    values: tuple[tuple[tuple[Any, ...], ...], ...]
    head: tuple[str, ...]
    #: the choice axes, in column order (default: every registered axis)
    axes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.axes:
            object.__setattr__(self, "axes", tuple(registry.names()))

    @classmethod
    def from_blocks(cls, blocks: Iterable[Any], head_values: Sequence[str]) -> Layout:
        """From :class:`searchcomp.models.Block` objects (anything with ``name`` and
        ``values()``) and the head's values."""
        names, values = [], []
        axes = tuple(registry.names())
        for b in blocks:
            names.append(b.name)
            v = b.values()
            values.append(tuple(tuple(v[c]) for c in axes))
        return cls(tuple(names), tuple(values), tuple(head_values), axes)

    @property
    def width(self) -> int:
        """Columns per block: one per axis."""
        return len(self.axes)

    @property
    def dims(self) -> np.ndarray:
        """Number of values of each column."""
        return np.array([len(v) for vs in self.values for v in vs] + [len(self.head)])

    @property
    def n_columns(self) -> int:
        """Columns of a row: one per block and axis, and one for the head."""
        return self.width * len(self.blocks) + 1

    def column(self, block: str, choice: str) -> int:
        """The column of ``block``'s ``choice``."""
        return self.width * self.blocks.index(block) + self.axes.index(choice)

    def neutral_index(self, i: int, choice: str) -> int:
        """Index of the neutral value (keep / 0 / 32) among block ``i``'s values, or the
        first value when the block does not allow it (as the search's seeds do)."""
        vals = self.values[i][self.axes.index(choice)]
        neutral = registry.neutral(choice)
        return vals.index(neutral) if neutral in vals else 0

    def neutral_row(self) -> np.ndarray:
        """The row of the base itself (every block neutral, head keep)."""
        row = [self.neutral_index(i, c) for i in range(len(self.blocks)) for c in self.axes]
        row.append(self.head.index(KEEP) if KEEP in self.head else 0)
        return np.array(row, dtype=np.int64)

    def encode(self, recipe: dict[str, Any]) -> np.ndarray:
        """The row of a recipe in its plain form (``{"blocks": {b: {choice: value}}, "head"}``,
        as stored with each trial); a value a block does not allow raises ValueError."""
        blocks = recipe.get("blocks") or {}
        row = []
        for i, b in enumerate(self.blocks):
            for k, c in enumerate(self.axes):
                neutral = registry.neutral(c)
                v = (blocks.get(b) or {}).get(c, neutral)
                vals = self.values[i][k]
                if v not in vals:
                    if v == neutral:
                        row.append(self.neutral_index(i, c))
                        continue
                    raise ValueError(f"{b} {c} {v!r} is not among {list(vals)}")
                row.append(vals.index(v))
        head = recipe.get("head", KEEP)
        if head not in self.head:
            raise ValueError(f"head {head!r} is not among {list(self.head)}")
        row.append(self.head.index(head))
        return np.array(row, dtype=np.int64)

    def decode(self, row: Sequence[int]) -> dict[str, Any]:
        """The plain recipe of a row (only non-neutral choices), as :meth:`encode` reads."""
        blocks: dict[str, dict[str, Any]] = {}
        for i, b in enumerate(self.blocks):
            for k, c in enumerate(self.axes):
                v = self.values[i][k][int(row[self.width * i + k])]
                if v != registry.neutral(c):
                    blocks.setdefault(b, {})[c] = v
        return {"blocks": blocks, "head": self.head[int(row[-1])]}

    def columns(self) -> list[tuple[str, str]]:
        """(block, axis) of every column but the head's, in order."""
        return [(b, a) for b in self.blocks for a in self.axes]

    def random_rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` rows drawn uniformly, column by column."""
        return (rng.random((n, self.n_columns)) * self.dims).astype(np.int64)

    def mutate(self, rows: np.ndarray, rng: np.random.Generator, max_changes: int = 3
               ) -> np.ndarray:
        """A copy of ``rows`` with 1..``max_changes`` random columns redrawn in each."""
        out = rows.copy()
        dims = self.dims
        changeable = np.flatnonzero(dims > 1)
        if not len(changeable):
            return out
        for r in out:
            k = int(rng.integers(1, max_changes + 1))
            for col in rng.choice(changeable, size=min(k, len(changeable)), replace=False):
                r[col] = (r[col] + rng.integers(1, dims[col])) % dims[col]
        return out

    def size(self) -> int:
        """Number of distinct recipes."""
        return int(np.prod(self.dims.astype(object)))


def row_keys(rows: np.ndarray) -> list[bytes]:
    """A hashable key per row (to tell recipes apart quickly)."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return [r.tobytes() for r in rows]
