"""The Pareto front of a study and its hypervolume: pure functions over trial rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from searchcomp.config import OBJECTIVES


def _key(row: dict[str, Any], objectives: Sequence[str]) -> tuple[float, ...]:
    """The row's objective values, all turned into 'smaller is better'."""
    return tuple(-float(row[o]) if OBJECTIVES[o] == "maximize" else float(row[o])
                 for o in objectives)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b everywhere and better somewhere (both minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True))


def pareto_front(rows: list[dict[str, Any]], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """Feasible rows that no other feasible row dominates, sorted by the first objective.

    Rows are dicts holding every objective; ``feasible: False`` rows are left out. Rows with
    identical objective values are all kept.
    """
    ok = [r for r in rows if r.get("feasible", True) and all(o in r for o in objectives)]
    keys = [_key(r, objectives) for r in ok]
    front = [r for r, k in zip(ok, keys, strict=True)
             if not any(dominates(other, k) for other in keys)]
    return sorted(front, key=lambda r: _key(r, objectives))


def normalized(row: dict[str, Any], objectives: Sequence[str], base: dict[str, Any]
               ) -> tuple[float, ...]:
    """Objectives in [0, ~1], smaller is better: 1 - accuracy, and each cost / the base's."""
    out = []
    for o in objectives:
        if o == "accuracy":
            out.append(1.0 - float(row[o]))
        else:
            out.append(float(row[o]) / max(float(base[o]), 1e-12))
    return tuple(out)


def hypervolume(rows: list[dict[str, Any]], objectives: Sequence[str],
                base: dict[str, Any]) -> float:
    """Volume dominated by the rows' normalised objectives, up to the reference point
    (accuracy 0, every cost equal to the base's). Larger is better; a candidate no smaller
    or faster than the base adds nothing. Exact (recursive slicing); fine for fronts of a few
    hundred points in up to 4-5 objectives."""
    pts = [normalized(r, objectives, base) for r in pareto_front(rows, objectives)]
    ref = tuple(1.0 for _ in objectives)
    return _hv(pts, ref)


def dominated_volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Volume of the union of the boxes [p, ref] (minimised coordinates), exact."""
    return _hv(points, ref)


def _hv(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    pts = [p for p in points if all(x < r for x, r in zip(p, ref, strict=True))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    # keep only non-dominated points, then sweep along the last axis
    pts = [p for p in pts if not any(dominates(q, p) for q in pts)]
    pts.sort(key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else ref[-1]
        if upper > p[-1]:
            volume += _hv([q[:-1] for q in pts[:i + 1]], ref[:-1]) * (upper - p[-1])
    return volume
