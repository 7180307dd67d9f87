"""Pareto front and hypervolume on hand-checked points."""

from __future__ import annotations

import pytest

from searchcomp.search.front import dominates, hypervolume, pareto_front

OBJ = ["accuracy", "size_mib"]
BASE = {"accuracy": 0.9, "size_mib": 10.0}


def _r(n, acc, mib, feasible=True):
    return {"trial": n, "accuracy": acc, "size_mib": mib, "feasible": feasible}


def test_dominates():
    assert dominates((1, 1), (2, 2)) and dominates((1, 2), (1, 3))
    assert not dominates((1, 2), (1, 2)) and not dominates((1, 3), (2, 2))


def test_front_is_non_dominated_and_feasible():
    rows = [_r(0, 0.9, 10), _r(1, 0.85, 5), _r(2, 0.80, 6), _r(3, 0.95, 2, feasible=False),
            _r(4, 0.7, 1), _r(5, 0.85, 5)]
    front = pareto_front(rows, OBJ)
    assert [r["trial"] for r in front] == [0, 1, 5, 4]  # 2 dominated by 1; 3 infeasible


def test_hypervolume_2d_by_hand():
    # normalised: (error, size/base) -> (0.1, 0.5) and (0.3, 0.1); reference (1, 1)
    rows = [_r(0, 0.9, 5.0), _r(1, 0.7, 1.0)]
    # area = (1-0.1)*(1-0.5) + (1-0.3)*(0.5-0.1) = 0.45 + 0.28
    assert hypervolume(rows, OBJ, BASE) == pytest.approx(0.73)
    assert hypervolume([_r(0, 0.9, 10.0)], OBJ, BASE) == 0.0  # the base adds nothing
    # a dominated point changes nothing
    assert hypervolume(rows + [_r(2, 0.6, 6.0)], OBJ, BASE) == pytest.approx(0.73)


def test_hypervolume_3d_single_box():
    obj = ["accuracy", "size_mib", "latency_ms"]
    base = {"accuracy": 1.0, "size_mib": 4.0, "latency_ms": 2.0}
    row = {"accuracy": 0.5, "size_mib": 2.0, "latency_ms": 1.0}
    assert hypervolume([row], obj, base) == pytest.approx(0.5 * 0.5 * 0.5)
