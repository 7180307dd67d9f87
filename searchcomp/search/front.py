"""The Pareto front of a study, its noise-aware variant and its hypervolume: pure functions
over trial rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from searchcomp.config import OBJECTIVES
from searchcomp.measure.intervals import difference_noise


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


# -- a front that knows its noise ------------------------------------------------------------

def tolerance(objective: str, a: dict[str, Any], b: dict[str, Any]) -> float:
    """The measured noise of a difference between rows ``a`` and ``b`` in ``objective``:
    accuracy, the half-width of the 95 % interval of the difference (the evaluations' and,
    with confirmation runs, the seeds' spread); latency, the larger half-spread (p90 - p10)
    / 2 of the two rows' timed runs; params, MiB and FLOPs are exact (0)."""
    if objective == "accuracy":
        return difference_noise(a, b)
    if objective == "latency_ms":
        return max((_half_spread(r) for r in (a, b)), default=0.0)
    return 0.0


def _half_spread(row: dict[str, Any]) -> float:
    lo, hi = row.get("latency_p10_ms"), row.get("latency_p90_ms")
    return 0.0 if lo is None or hi is None else max(0.0, (float(hi) - float(lo)) / 2)


def beats_beyond_noise(q: dict[str, Any], p: dict[str, Any], objectives: Sequence[str]
                       ) -> bool:
    """``q`` dominates ``p``, and in one objective at least by more than the noise."""
    kq, kp = _key(q, objectives), _key(p, objectives)
    return dominates(kq, kp) and any(a < b - tolerance(o, q, p)
                                     for o, a, b in zip(objectives, kq, kp, strict=True))


def noise_front(rows: list[dict[str, Any]], objectives: Sequence[str]) -> list[dict[str, Any]]:
    """The front that does not reward luck: feasible rows that no other row beats by more
    than the measured noise (:func:`beats_beyond_noise`), sorted like :func:`pareto_front`.

    It holds the Pareto front and the points dominated only within noise. Each row comes back
    as a copy with two marks: ``within_noise_of``, the trials that dominate it, but only
    within noise (empty on the plain Pareto front), and ``lead_within_noise_over``, the front
    points no costlier in any cost (and cheaper in one) whose lower accuracy is within noise
    of this row's (its accuracy lead over them may be luck)."""
    ok = [r for r in rows if r.get("feasible", True) and all(o in r for o in objectives)]
    keep = [r for r in ok if not any(q is not r and beats_beyond_noise(q, r, objectives)
                                     for q in ok)]
    costs = [o for o in objectives if o != "accuracy"]
    out = []
    for r in keep:
        k = _key(r, objectives)
        within = [q["trial"] for q in ok if q is not r and dominates(_key(q, objectives), k)]
        lead = []
        if "accuracy" in objectives and costs:
            kc = _key(r, costs)
            for q in keep:
                if q is r or not dominates(_key(q, costs), kc):
                    continue
                gap = float(r["accuracy"]) - float(q["accuracy"])
                if 0 < gap <= tolerance("accuracy", r, q):
                    lead.append(q["trial"])
        out.append({**r, "within_noise_of": within, "lead_within_noise_over": lead})
    return sorted(out, key=lambda r: _key(r, objectives))


def hypervolume_interval(rows: list[dict[str, Any]], runs: dict[Any, list[float]],
                         objectives: Sequence[str], base: dict[str, Any], *,
                         draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """The 95 % bootstrap interval of :func:`hypervolume`: each draw resamples, with
    replacement, the accuracies of every row with repeated runs (``runs``: trial -> the
    accuracies of its original and its confirmation runs) and uses their mean."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # only rows that some draw can put on the front matter: not dominated by another row at
    # its worst run when they are at their best
    def at(r: dict[str, Any], pick: Any) -> tuple[float, ...]:
        acc = runs.get(r["trial"])
        return _key({**r, "accuracy": pick(acc)} if acc else r, objectives)

    ok = [r for r in rows if r.get("feasible", True) and all(o in r for o in objectives)]
    worst = [at(r, min) for r in ok]
    rows = [r for r in ok if not any(dominates(w, at(r, max)) for w in worst)]
    values = []
    for _ in range(draws):
        drawn = []
        for r in rows:
            acc = runs.get(r["trial"])
            if acc and len(acc) > 1:
                r = {**r, "accuracy": float(np.mean(rng.choice(acc, size=len(acc))))}
            drawn.append(r)
        values.append(hypervolume(drawn, objectives, base))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
