"""Expected hypervolume improvement (EHVI) of candidate recipes over the current front.

Objectives are normalised and minimised (1 - accuracy, cost / base cost), as in
:mod:`searchcomp.search.front`. A candidate's costs are known (exactly, or from the latency
table); its error 1 - accuracy is Gaussian with the predictor's mean and sd. For a candidate
with costs c, the volume it would add is ``HVI(e) = integral from e to ref_e of A(t) dt``,
where ``A(t)`` is the part of the box [c, ref] (in the cost dimensions) not dominated by
the front points whose error is at most t. ``A`` is a step function of t, so the
expectation has a closed form with the normal CDF: exact, no Monte-Carlo sampling.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from searchcomp.search.front import dominated_volume


def _free_volume(c: np.ndarray, pts: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per candidate (rows of ``c``), the volume of the box [c, ref] not dominated by
    ``pts`` (all minimised; ``pts`` are sorted by the first cost dimension when there are
    two). Vectorised for one and two dimensions."""
    n, m = c.shape
    c = np.minimum(c, ref)
    box = np.prod(ref - c, axis=1)
    if not len(pts):
        return box
    if m == 1:
        q = np.maximum(c[:, :1], pts[None, :, 0])  # (n, k)
        return np.maximum(0.0, q.min(axis=1) - c[:, 0]) * (ref[0] >= c[:, 0])
    if m == 2:
        qx = np.maximum(c[:, None, 0], pts[None, :, 0])  # (n, k), ascending in k
        qy = np.maximum(c[:, None, 1], pts[None, :, 1])
        xs = np.concatenate([qx, np.full((n, 1), ref[0])], axis=1)
        run = np.minimum.accumulate(qy, axis=1)
        dominated = np.sum(np.diff(xs, axis=1) * (ref[1] - run), axis=1)
        return box - dominated
    out = np.empty(n)
    for i in range(n):
        q = [tuple(np.maximum(c[i], p)) for p in pts]
        out[i] = box[i] - dominated_volume(q, tuple(ref))
    return out


def expected_improvement(front: np.ndarray, cand: np.ndarray, sd: np.ndarray | None,
                         ref: np.ndarray) -> np.ndarray:
    """EHVI of each candidate. ``front`` (k, d) and ``cand`` (n, d) hold normalised
    objectives; with ``sd`` (n,) the first column of ``cand`` is the mean of a Gaussian with
    that sd (the others are known); without, every column is known."""
    front = np.asarray(front, dtype=float).reshape(-1, cand.shape[1])
    cand = np.asarray(cand, dtype=float)
    ref = np.asarray(ref, dtype=float)
    front = front[np.all(front < ref, axis=1)]
    if sd is None:
        pts = front[np.argsort(front[:, 0], kind="stable")]
        return np.maximum(0.0, _free_volume(cand, pts, ref))
    mu, sd = cand[:, 0], np.maximum(np.asarray(sd, dtype=float), 1e-9)
    costs, ref_c = cand[:, 1:], ref[1:]
    order = np.argsort(front[:, 0], kind="stable")
    errs = front[order, 0]
    pts = front[order, 1:]
    k = len(errs)
    areas = np.empty((len(cand), k + 1))
    if costs.shape[1] == 0:
        areas[:, 0] = 1.0
        areas[:, 1:] = 0.0
    else:
        by_x = np.argsort(pts[:, 0], kind="stable") if len(pts) else np.zeros(0, dtype=int)
        for j in range(k + 1):
            included = by_x[by_x < j]  # the j smallest errors, kept in x order
            areas[:, j] = _free_volume(costs, pts[included], ref_c)
    areas = np.maximum(areas, 0.0)
    bounds = np.concatenate([[-np.inf], errs, [ref[0]]])

    def psi(t: float) -> np.ndarray:
        if t == -np.inf:
            return np.zeros_like(mu)
        z = (t - mu) / sd
        return sd * (z * ndtr(z) + np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi))

    total = np.zeros(len(cand))
    prev = psi(bounds[0])
    for j in range(k + 1):
        cur = psi(bounds[j + 1])
        total += areas[:, j] * (cur - prev)
        prev = cur
    return np.maximum(total, 0.0)
