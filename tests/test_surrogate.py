"""The surrogate sampler on synthetic problems (no training, deterministic): it never repeats a
recipe, and with a rough, biased sensitivity table it finds the true front faster than
random sampling. Also the exact EHVI against Monte-Carlo, and --target parsing."""

from __future__ import annotations

import itertools

import numpy as np
import optuna
import pytest

from searchcomp.errors import SearchcompError
from searchcomp.predict.accuracy import AccuracyModel
from searchcomp.predict.budget import Budget
from searchcomp.predict.layout import Layout
from searchcomp.predict.predictor import Predictor
from searchcomp.predict.sensitivity import REFERENCE, Sensitivity
from searchcomp.predict.table import CostTable, Factor
from searchcomp.search.acquisition import expected_improvement
from searchcomp.search.front import dominated_volume, hypervolume, pareto_front
from searchcomp.search.runner import record_prediction
from searchcomp.search.surrogate import PREDICTED, SurrogateSampler

CHOICES = ("conv", "prune", "bits")  # the three built-in axes this made-up space has
OBJ = ["accuracy", "size_mib", "latency_ms"]


def _problem(n_blocks: int, conv=("keep", "a", "b"), prune=(0.0, 0.5), bits=(32, 8), seed=0):
    """A layout, its cost table, a true accuracy (additive plus a compounding term) and a
    sensitivity table that is off by 30 % and noisy, as a short recovery would be."""
    rng = np.random.default_rng(seed)
    lay = Layout(tuple(f"b{i}" for i in range(n_blocks)),
                 tuple((conv, prune, bits) for _ in range(n_blocks)), ("keep", "h"), CHOICES)
    true, blocks = {}, []
    for i, b in enumerate(lay.blocks):
        for k, c in enumerate(CHOICES):
            n = len(lay.values[i][k])
            true[b, c] = np.concatenate([[0.0], -rng.random(n - 1) * 0.05 * (1 + i)])
        w = 1.0 + i
        shape = (len(conv), len(prune), len(bits))
        size, lat = np.zeros(shape), np.zeros(shape)
        for ci, pi, qi in itertools.product(*map(range, shape)):
            s = w * (1, 0.3, 0.5)[ci] * (1, 0.5, 0.25)[pi]
            size[ci, pi, qi] = s * (1, 0.25, 0.125)[qi] - w
            lat[ci, pi, qi] = w * (1, 0.5, 0.8)[ci] * (1, 0.7, 0.5)[pi] - w
        blocks.append({"size_mib": size, "latency_ms": lat})
    total = sum(1.0 + i for i in range(n_blocks)) + 1
    base = {"accuracy": 0.9, "size_mib": total, "latency_ms": total}
    table = CostTable(lay, {"size_mib": total, "latency_ms": total},
                      [Factor((3 * i, 3 * i + 1, 3 * i + 2), arr) for i, arr in enumerate(blocks)]
                      + [Factor((lay.n_columns - 1,), {"size_mib": np.array([0.0, -0.5]),
                                                      "latency_ms": np.zeros(2)})])

    def accuracy(row) -> float:
        d = sum(true[b, c][row[3 * i + k]] for i, b in enumerate(lay.blocks)
                for k, c in enumerate(CHOICES)) + (0.0, -0.01)[row[-1]]
        return 0.9 + d - 1.5 * d * d

    rows = {REFERENCE: {"accuracy": 0.9}, ("fc", "head", "h"): {"accuracy": 0.89}}
    for i, b in enumerate(lay.blocks):
        for k, c in enumerate(CHOICES):
            for vi, v in enumerate(lay.values[i][k][1:], start=1):
                rows[b, c, v] = {"accuracy": 0.9 + 0.7 * true[b, c][vi] + rng.normal(0, 0.004)}
    return lay, table, base, accuracy, Sensitivity(rows, "fc", 10)


def _run(lay, table, accuracy, sampler, n):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=sampler)
    neutral = lay.decode(lay.neutral_row())
    study.enqueue_trial({f"{b}/{c}": lay.values[i][k][0] for i, b in enumerate(lay.blocks)
                         for k, c in enumerate(CHOICES)} | {"head": neutral["head"]})

    def objective(trial):
        row = [lay.values[i][k].index(trial.suggest_categorical(f"{b}/{c}",
                                                                 list(lay.values[i][k])))
               for i, b in enumerate(lay.blocks) for k, c in enumerate(CHOICES)]
        row.append(lay.head.index(trial.suggest_categorical("head", list(lay.head))))
        m = {k: float(v[0]) for k, v in table.predict(np.array([row])).items()}
        m["accuracy"] = accuracy(row)
        for k, v in m.items():
            trial.set_user_attr(k, v)
        record_prediction(study, trial)  # what the search's drivers do for each trial
        return m["accuracy"], m["size_mib"], m["latency_ms"]

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, n_trials=n)
    return study


def _surrogate(lay, table, base, sens, seed=0):
    pred = Predictor(lay, table, AccuracyModel(lay, sens, 0.9, seed), base)
    return SurrogateSampler(seed=seed).attach(pred, OBJ)


def test_never_proposes_a_recipe_that_ran():
    lay, table, base, accuracy, sens = _problem(3, conv=("keep", "a"), prune=(0.0,),
                                                bits=(32,))
    n = lay.size()
    assert n == 16
    study = _run(lay, table, accuracy, _surrogate(lay, table, base, sens), n)
    keys = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(keys) == n  # every recipe exactly once: nothing repeated, nothing left out
    assert all(PREDICTED in t.user_attrs for t in study.trials[1:])  # the base was queued


def test_finds_the_true_front_faster_than_random():
    lay, table, base, accuracy, sens = _problem(3)
    rows = np.array(list(itertools.product(*[range(d) for d in lay.dims])))
    metrics = table.predict(rows)
    everything = [{"accuracy": accuracy(r), **{k: float(v[i]) for k, v in metrics.items()}}
                  for i, r in enumerate(rows)]
    best = hypervolume(everything, OBJ, base)
    n = 12

    def share(sampler) -> list[float]:
        study = _run(lay, table, accuracy, sampler, n)
        got = [dict(t.user_attrs) for t in study.trials]
        return [hypervolume(got[:k], OBJ, base) / best for k in range(1, n + 1)]

    surrogate = share(_surrogate(lay, table, base, sens))
    randoms = [share(optuna.samplers.RandomSampler(seed=s)) for s in range(3)]
    # after 6 and after 12 fine-tunes the surrogate's front is closer to the true one
    for k in (5, 11):
        assert surrogate[k] > max(r[k] for r in randoms) + 0.05, (surrogate, randoms)
    assert surrogate[-1] > 0.9  # and nearly the whole true front's hypervolume
    assert len(pareto_front(everything, OBJ)) > 3


def test_target_region_keeps_the_trials_inside():
    lay, table, base, accuracy, sens = _problem(4, seed=1)
    sampler = _surrogate(lay, table, base, sens)
    sampler.region = Budget({"size_mib": 0.4 * base["size_mib"]})
    study = _run(lay, table, accuracy, sampler, 8)
    assert all(t.user_attrs["size_mib"] <= 0.4 * base["size_mib"] for t in study.trials[1:])


def test_unattached_surrogate_samples_at_random():
    study = optuna.create_study(sampler=SurrogateSampler(seed=0))
    study.optimize(lambda t: t.suggest_categorical("x", ["a", "b", "c"]) == "a", n_trials=5)
    assert len(study.trials) == 5


@pytest.mark.parametrize("d", [1, 2, 3])
def test_expected_improvement_matches_monte_carlo(d):
    rng = np.random.default_rng(d)
    front = rng.random((5, d)) * 0.9
    cand = rng.random((4, d)) * 0.9
    sd = rng.random(4) * 0.15 + 0.02
    ref = np.ones(d)
    got = expected_improvement(front, cand, sd, ref)
    hv0 = dominated_volume([tuple(p) for p in front], tuple(ref))
    for i in range(4):
        samples = []
        for e in rng.normal(cand[i, 0], sd[i], 1500):
            p = cand[i].copy()
            p[0] = e
            samples.append(dominated_volume([*map(tuple, front), tuple(p)], tuple(ref)) - hv0)
        assert got[i] == pytest.approx(np.mean(samples), abs=4 * np.std(samples) / np.sqrt(1500) + 1e-4)
    exact = [dominated_volume([*map(tuple, front), tuple(c)], tuple(ref)) - hv0 for c in cand]
    assert expected_improvement(front, cand, None, ref) == pytest.approx(exact)


def test_budget_parsing():
    b = Budget.parse("size_mib<=2, latency_ms<=5,accuracy>=0.7")
    assert b.max_costs == {"size_mib": 2.0, "latency_ms": 5.0} and b.min_accuracy == 0.7
    assert b.describe() == "size_mib <= 2, latency_ms <= 5, accuracy >= 0.7"
    assert list(b.inside({"size_mib": [1, 3], "latency_ms": [4, 4], "accuracy": [0.8, 0.8]})) \
        == [True, False]
    for bad, why in (("size_mib<2", "cannot read"), ("speed<=3", "not a limit"),
                     ("accuracy<=0.5", "not a limit"), ("", "at least one")):
        with pytest.raises(SearchcompError, match=why):
            Budget.parse(bad)
