"""The rungs strategy: fidelity rungs in one study, asynchronous multi-objective promotion,
anchors, the compute budget, resume between rungs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from searchcomp.search.rungs import (
    RUNG,
    RUNG_ACCURACY,
    RUNG_COSTS,
    STEPS_SPENT,
    pareto_ranks,
    promotion,
    rank_order,
    rung_steps,
)

BASE = {"accuracy": 0.9, "size_mib": 10.0, "latency_ms": 10.0}
OBJ = ["accuracy", "size_mib", "latency_ms"]


def _row(acc, mib, ms, trial=0):
    return {"accuracy": acc, "size_mib": mib, "latency_ms": ms, "trial": trial}


def test_rung_steps_grow_by_eta_up_to_the_full_fine_tune():
    assert rung_steps(40, 3, 2) == (0, 13, 40)
    assert rung_steps(81, 3, 3) == (0, 9, 27, 81)
    assert rung_steps(2, 3, 2) == (0, 1, 2)  # every rung at least one step more
    assert rung_steps(10, 2, 1) == (0, 10)


def test_promotion_takes_the_non_dominated_share_of_a_rung():
    # known rung results: three non-dominated points and three each dominated by one
    front = [_row(0.80, 5.0, 5.0, 1), _row(0.60, 1.0, 4.0, 2), _row(0.70, 2.0, 1.0, 3)]
    behind = [_row(0.75, 6.0, 6.0, 4), _row(0.55, 1.5, 4.5, 5), _row(0.50, 9.0, 9.0, 6)]
    rows = front + behind
    assert pareto_ranks([(1 - r["accuracy"], r["size_mib"], r["latency_ms"]) for r in rows]
                        ) == [0, 0, 0, 1, 1, 2]
    order = rank_order(rows, OBJ, BASE)
    assert set(order[:3]) == {0, 1, 2}  # the front first, then the next front
    for me in front:  # 6 candidates, eta 2: the first 3 go on = exactly the front
        go, why = promotion(me, [r for r in rows if r is not me], OBJ, BASE, eta=2)
        assert go, why
    for me in behind:
        go, why = promotion(me, [r for r in rows if r is not me], OBJ, BASE, eta=2)
        assert not go and "the first 3 go on" in why
    # eta 3: 2 of 6 go on; inside the front the larger hypervolume contributions win
    kept = [r["trial"] for r in rows
            if promotion(r, [q for q in rows if q is not r], OBJ, BASE, eta=3)[0]]
    assert len(kept) == 2 and set(kept) <= {1, 2, 3}


def test_the_first_candidate_of_a_rung_goes_on_and_a_dominated_second_does_not():
    first = _row(0.5, 5.0, 5.0)
    assert promotion(first, [], OBJ, BASE, eta=3)[0]
    worse = _row(0.4, 6.0, 6.0)
    assert not promotion(worse, [first], OBJ, BASE, eta=3)[0]
    better = _row(0.6, 4.0, 4.0)
    assert promotion(better, [first], OBJ, BASE, eta=3)[0]


RUNG_SPACE = """\
name: tiny-rungs
model: {{arch: resnet18, num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50}}
base: {{source: train, epochs: 1}}
blocks:
  default: {{conv: [keep, separable], prune: [0.0, 0.5], bits: [32, 8]}}
  head: [keep]
finetune: {{steps: 6}}
objectives: [accuracy, size_mib, latency_ms]
measure: {{runs: 30, warmup: 1}}
search: {{trials: {trials}, strategy: rungs, rungs: {{eta: 2, count: 2, bn_batches: 2}}}}
studies_dir: {studies}
"""


def _space(tmp_path, trials=9, extra=()):
    from searchcomp.config import load_space

    p = tmp_path / "rungs.yaml"
    p.write_text(RUNG_SPACE.format(trials=trials, studies=tmp_path / "studies"))
    return load_space(p, list(extra))


def test_rung_zero_is_the_built_trial_with_batchnorm_re_estimated_and_nothing_else(tmp_path):
    from searchcomp.candidate import Recipe, build
    from searchcomp.search.rungs import RungPlan, score_rung
    from searchcomp.search.trial import prepare
    from searchcomp.train import evaluate, reestimate_bn

    space = _space(tmp_path)
    ctx = prepare(space, progress=False, log=lambda m: None)
    recipe = Recipe({"layer1.0": {"prune": 0.5}, "layer2.1": {"conv": "separable"}})
    torch.manual_seed(3)
    built = build(ctx.base, recipe, ctx.blocks, ctx.head_name, ctx.calib,
                  grad_batches=ctx.grad_batches)
    before = copy.deepcopy(built.model.state_dict())
    plan = RungPlan.of(space, 6)
    acc = score_rung(ctx, built.model, 0, plan, seed=3)
    # the built model is left as it was; a copy with only BatchNorm statistics re-estimated
    # scores the same
    after = built.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    m = copy.deepcopy(built.model)
    reestimate_bn(m, ctx.splits.train.reseeded(3), plan.bn_batches, ctx.compute)
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                           for k in changed)
    assert acc == evaluate(m, ctx.splits.val, ctx.compute)


@pytest.mark.slow
def test_a_rungs_run_stops_most_candidates_early_and_keeps_them_off_the_front(tmp_path):
    from searchcomp.results.study import load_results
    from searchcomp.search.api import run_search
    from searchcomp.search.study import open_study

    space = _space(tmp_path, trials=10)
    summary = run_search(space, quiet=True, log=lambda m: None)
    trials = open_study(space, load_only=True).get_trials()
    anchors = [t for t in trials if t.user_attrs.get("anchor")]
    # present once each, counted, marked, at full fidelity
    assert sorted(t.user_attrs["tag"] for t in anchors) == [
        "anchor bits=8", "anchor conv=separable", "anchor prune=0.5"]
    assert all(t.state == TrialState.COMPLETE and t.user_attrs[RUNG] == 2 for t in anchors)
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    assert stopped, "with eta 2 some candidates stop at a lower rung"
    for t in stopped:
        a = t.user_attrs
        assert a[RUNG] < 2 and "stopped at rung" in a["stopped_reason"]
        assert str(a[RUNG]) in a[RUNG_ACCURACY] and a[RUNG_COSTS]["size_mib"] > 0
        assert "accuracy" not in a  # never a full-fidelity figure
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs[RUNG] == 2 and set(t.user_attrs[RUNG_ACCURACY]) == {"0", "1", "2"}
    res = load_results(space)
    front = {r["trial"] for r in res.front}
    assert not front & {t.number for t in stopped}
    # compute counted in full fine-tunes: every rung's steps, anchors included
    spent = sum(t.user_attrs.get(STEPS_SPENT, 0) for t in trials) / 6
    assert summary.compute == pytest.approx(spent)
    # a stopped candidate cost less than one full fine-tune (a promoted one costs more: its
    # last rung fine-tunes the built candidate again, as a search trial would)
    assert all(t.user_attrs[STEPS_SPENT] < 6 for t in stopped)


@pytest.mark.slow
def test_the_budget_stops_the_run(tmp_path):
    from searchcomp.search.api import run_search

    space = _space(tmp_path, trials=50)
    summary = run_search(space, quiet=True, log=lambda m: None, budget=3.0)
    assert summary.stopped == "budget" and summary.done < 50
    assert 3.0 <= summary.compute < 3.0 + 1.5  # at most one trial's rungs past it


def test_a_retried_trial_keeps_the_rungs_its_first_attempt_finished(tmp_path, monkeypatch):
    """A trial killed between rungs is queued again with its rung results (the lease keeps
    them); the retry scores only the missing rungs, and counts only their steps."""
    import searchcomp.search.rungs as rungs
    from searchcomp.candidate import Recipe
    from searchcomp.search.lease import KEPT_ATTRS
    from searchcomp.search.rungs import RungPlan, run_rungs
    from searchcomp.search.trial import prepare

    assert {RUNG_ACCURACY, RUNG_COSTS} <= set(KEPT_ATTRS) and STEPS_SPENT not in KEPT_ATTRS
    space = _space(tmp_path)
    ctx = prepare(space, progress=False, log=lambda m: None)
    scored: list[int] = []
    score = rungs.score_rung
    monkeypatch.setattr(rungs, "score_rung",
                        lambda *a, **k: scored.append(a[2]) or score(*a, **k))
    plan = RungPlan.of(space, 6)
    known = {RUNG_ACCURACY: {"0": 0.123}, RUNG_COSTS: {"params": 1, "size_mib": 1.0,
                                                     "latency_ms": 1.0, "flops": 1}}
    stored: dict = {}
    outcome = run_rungs(ctx, Recipe({"layer1.0": {"bits": 8}}), 5, "t5", plan,
                        lambda r: [], stored.update, anchor=True, known=known)
    assert scored == [1]  # rung 0 was known; rung 2 is the full trial itself
    assert stored[RUNG_ACCURACY]["0"] == 0.123 and set(stored[RUNG_ACCURACY]) == {"0", "1", "2"}
    assert stored[STEPS_SPENT] == plan.steps[1] + plan.steps[2]
    assert stored[RUNG_COSTS] == known[RUNG_COSTS]  # measured once, at the first attempt
    assert outcome.metrics["accuracy"] == stored[RUNG_ACCURACY]["2"]


@pytest.mark.slow
def test_two_workers_promote_asynchronously_with_no_rung_run_twice(tmp_path):
    import subprocess
    import sys

    from searchcomp.search.study import open_study

    from .test_reliability import _env

    space = _space(tmp_path, trials=10)
    storage = f"journal:{tmp_path / 'shared.log'}"
    cmd = [sys.executable, "-m", "searchcomp", "run", space.file, "--quiet", "--storage",
           storage]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path, env=_env()) for _ in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    trials = open_study(space, storage=storage, load_only=True).get_trials()
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials) == 10
    plan_steps = trials[0].user_attrs["rung_steps"]
    workers = set()
    for t in trials:
        a = t.user_attrs
        workers.add(t.system_attrs.get("searchcomp:worker"))
        # each rung scored once: the steps spent are exactly those of the rungs it reached
        assert a[STEPS_SPENT] == sum(plan_steps[:a[RUNG] + 1])
    assert len(workers) == 2  # both took part


@pytest.mark.skipif(__import__("importlib").util.find_spec("ray") is None,
                    reason="Ray Tune not installed (pip install -e .[ray])")
@pytest.mark.slow
def test_rungs_on_ray_workers(tmp_path):
    """Ray workers climb the rungs themselves: each rung's result reaches the study from the
    worker, promotion reads the study, stopped candidates end as PRUNED."""
    import os
    import subprocess
    import sys

    from searchcomp.config import load_space
    from searchcomp.search.study import open_study

    from .test_reliability import _space_file

    spec = _space_file(tmp_path, steps=2, trials=7)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "PYTHONPATH": os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-m", "searchcomp", "run", str(spec), "--backend", "ray",
                        "--strategy", "rungs", "--set", "search.rungs.eta=2", "--concurrency",
                        "2", "--quiet"], capture_output=True, text=True, timeout=900,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = open_study(load_space(spec, ["search.rungs.eta=2"]), load_only=True).get_trials()
    assert len(trials) == 7
    for t in trials:
        a = t.user_attrs
        assert a[RUNG_COSTS] and "0" in a[RUNG_ACCURACY]  # written by the worker
        if t.state == TrialState.COMPLETE:
            assert a[RUNG] == 2 and set(a[RUNG_ACCURACY]) == {"0", "1", "2"}
        else:
            assert t.state == TrialState.PRUNED and "stopped at rung" in a["stopped_reason"]
    assert "compute:" in r.stderr
