"""The sensitivity table: the validation accuracy of every single change, briefly recovered.

One row per block and non-neutral value of each of its choices (and per head value): the
candidate that differs from the base by that change alone, fine-tuned ``profile.steps``
steps, scored on the validation split; plus a reference row, the unchanged base after the
same recovery, so a row's accuracy change is its change's effect alone. Rows live in the
study's profile file (:mod:`.store`) under a key of everything that determines them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from searchcomp.choices import axes
from searchcomp.config import KEEP, Space
from searchcomp.predict.layout import Layout
from searchcomp.predict.store import ProfileStore, content_key

SECTION = "accuracy"
#: the reference row: the base itself after the same recovery
REFERENCE = ("", "base", KEEP)


def profile_seed(space: Space) -> int:
    """The recovery's seed: ``profile.seed``, else ``search.seed``."""
    return space.search.seed if space.profile.seed is None else space.profile.seed


def accuracy_context(space: Space) -> dict[str, Any]:
    """Everything besides the change that determines a row: the base model (its cache key,
    or the checkpoint file), the data subsets, the recovery settings and pruning's rounding."""
    from searchcomp.models.base import cache_key

    base: dict[str, Any] = {"source": space.base.source, "key": cache_key(space)}
    if space.base.source == "checkpoint" and space.base.path:
        try:
            st = os.stat(space.base.path)
            base["file"] = [os.path.abspath(space.base.path), st.st_size, st.st_mtime_ns]
        except OSError:
            base["file"] = space.base.path
    ft = space.finetune.model_dump(exclude={"epochs", "steps", "min_accuracy", "check_at"})
    return {"base": base, "data": space.data.model_dump(exclude={"root", "download",
                                                                 "test_size"}),
            "finetune": ft, "steps": space.profile.steps, "seed": profile_seed(space),
            "round_to": space.blocks.prune_round_to}


def _norm(choice: str, value: Any) -> Any:
    """A value in canonical type (a ratio as a float, a bit width as an int), so row keys
    match however the space file spelled it."""
    if choice not in axes.names():
        return str(value)  # the head, the reference
    try:
        return axes.get(choice).parse(value)
    except ValueError:
        return value


def _neutral(choice: str) -> Any:
    return axes.neutral(choice) if choice in axes.names() else KEEP


def wanted_rows(layout: Layout, head_name: str) -> list[tuple[str, str, Any]]:
    """Every row the layout needs, reference first: (block, choice, value) for each
    non-neutral value of each block's choices, then (head module, ``head``, value)."""
    out = [REFERENCE]
    for i, b in enumerate(layout.blocks):
        for k, c in enumerate(layout.axes):
            out += [(b, c, _norm(c, v)) for v in layout.values[i][k] if v != axes.neutral(c)]
    out += [(head_name, "head", h) for h in layout.head if h != KEEP]
    return out


@dataclass
class Sensitivity:
    """The rows of one space's table that are known, by (block, choice, value)."""

    rows: dict[tuple[str, str, Any], dict[str, Any]] = field(default_factory=dict)
    head_name: str = ""
    steps: int = 0

    @property
    def reference(self) -> float | None:
        """Validation accuracy of the unchanged base after the same recovery."""
        row = self.rows.get(REFERENCE)
        return None if row is None else float(row["accuracy"])

    def delta(self, block: str, choice: str, value: Any) -> float | None:
        """Accuracy change of one single change against the reference (None: unknown)."""
        if value == _neutral(choice):
            return 0.0
        row = self.rows.get((block, choice, _norm(choice, value)))
        ref = self.reference
        if row is None or ref is None or row.get("accuracy") is None:
            return None
        return float(row["accuracy"]) - ref

    def complete(self, layout: Layout) -> bool:
        """True when every row the layout needs is known."""
        return all(r in self.rows for r in wanted_rows(layout, self.head_name))

    def error(self, block: str, choice: str, value: Any) -> float | None:
        """Output error right after one single change (0 for no change; None: unknown)."""
        if value == _neutral(choice):
            return 0.0
        row = self.rows.get((block, choice, _norm(choice, value)))
        return None if row is None or row.get("output_error") is None else \
            float(row["output_error"])

    def prior(self, layout: Layout, what: str = "delta"
              ) -> tuple[list[list[np.ndarray]], np.ndarray]:
        """Accuracy change (``what="delta"``) or output error (``"error"``) of every value,
        as arrays indexed like a layout row: per block, one array per choice; and one for
        the head. Unknown values are NaN."""
        get = self.delta if what == "delta" else self.error
        blocks = []
        for i, b in enumerate(layout.blocks):
            per = []
            for k, c in enumerate(layout.axes):
                per.append(np.array([np.nan if (d := get(b, c, v)) is None else d
                                     for v in layout.values[i][k]]))
            blocks.append(per)
        head = np.array([np.nan if (d := get(self.head_name, "head", h)) is None else d
                         for h in layout.head])
        return blocks, head


def row_key(context: dict[str, Any], block: str, choice: str, value: Any) -> str:
    """The store key of one row."""
    return content_key({**context, "row": [block, choice, _norm(choice, value)]})


def load_sensitivity(store: ProfileStore, space: Space, layout: Layout,
                     head_name: str) -> Sensitivity:
    """The rows of ``layout`` the store holds for the current settings."""
    ctx = accuracy_context(space)
    rows = {}
    for r in wanted_rows(layout, head_name):
        got = store.get(SECTION, row_key(ctx, *r))
        if got is not None:
            rows[r] = got
    return Sensitivity(rows, head_name, space.profile.steps)
