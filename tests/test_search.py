"""Whole searches on a tiny model: storage, front, failures, early stop, greedy, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from searchcomp.cli import main
from searchcomp.config import load_space
from searchcomp.results.study import load_results
from searchcomp.search.api import run_search
from searchcomp.search.front import dominates, hypervolume, normalized
from searchcomp.search.greedy import greedy_rule
from searchcomp.search.study import open_study

SEARCH_SPACE = """\
name: tiny-search
model: {{arch: resnet18, num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50}}
base: {{source: train, epochs: 1}}
blocks:
  default: {{conv: [keep, separable, meta:4], prune: [0.0, 0.5], bits: [32, 8]}}
  head: [keep, meta:2]
finetune: {{steps: {steps}}}
objectives: [accuracy, size_mib, latency_ms]
measure: {{runs: 30, warmup: 1}}
search: {{trials: {trials}, seed_configs: [{{conv: separable}}], heartbeat_s: 1}}
studies_dir: {studies}
"""


def _space_file(tmp_path: Path, steps: int = 3, trials: int = 5) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(SEARCH_SPACE.format(steps=steps, trials=trials, studies=tmp_path / "studies"))
    return p


def _quiet(_msg: str) -> None:
    pass


def _inclusion_exclusion_volume(points: list[tuple[float, ...]]) -> float:
    """Volume of the union of the boxes [p, 1]^d: an algorithm independent of the package's."""
    from itertools import combinations
    from math import prod

    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in combinations(points, k):
            corner = [max(c) for c in zip(*subset, strict=True)]
            total += (-1) ** (k + 1) * prod(max(0.0, 1.0 - c) for c in corner)
    return total


@pytest.mark.slow
def test_whole_run_stores_trials_and_a_true_front(tmp_path, capsys):
    space = load_space(_space_file(tmp_path))
    summary = run_search(space, quiet=True, log=_quiet)
    assert summary.done == 5
    study = open_study(space, load_only=True)
    trials = study.get_trials()
    # the base, then the anchors: the greedy rule's swap first (the space's own seed
    # {conv: separable} is the same recipe, so it is not queued twice)
    assert [t.user_attrs.get("tag") for t in trials[:2]] == ["base", "anchor conv=separable"]
    t0 = trials[0]
    assert t0.user_attrs["recipe"] == {"blocks": {}, "head": "keep"}
    for key in ("accuracy", "params", "size_mib", "latency_ms", "flops", "init_errors",
                "finetune_seconds", "weights", "latency_runtime"):
        assert key in t0.user_attrs
    assert Path(t0.user_attrs["weights"]).is_file()
    assert trials[1].user_attrs["max_init_error"] > 0
    res = load_results(space)
    assert res.front
    keys = [(-r["accuracy"], r["size_mib"], r["latency_ms"]) for r in res.rows
            if r["state"] == "complete"]
    for r in res.front:
        k = (-r["accuracy"], r["size_mib"], r["latency_ms"])
        assert not any(dominates(o, k) for o in keys)
    # the reported hypervolume is the volume the front dominates, by inclusion-exclusion
    assert res.hypervolume == pytest.approx(_inclusion_exclusion_volume(
        [normalized(r, res.objectives, res.base) for r in res.front]), abs=1e-12)
    # latency moves with the machine's load, so check the volume on accuracy and size only:
    # the all-separable seed is far smaller than the base and above zero accuracy
    complete = [r for r in res.rows if r["state"] == "complete"]
    assert hypervolume(complete, ["accuracy", "size_mib"], res.base) > 0
    # the CLI prints the same front as JSON
    assert main(["front", str(space.file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["study"] == "tiny-search" and out["objectives"] == list(space.objectives)
    assert {p["trial"] for p in out["front"]} == {r["trial"] for r in res.front}
    assert set(out["front"][0]) >= {"trial", "recipe", "accuracy", "params", "size_mib",
                                    "latency_ms"}
    assert out["base"]["params"] == 11172810 and out["greedy"] is None
    # running again with the same --trials does nothing more
    assert run_search(space, quiet=True, log=_quiet).ran == 0
    # a repeated configuration is not fine-tuned again: it reuses the earlier result, and
    # does not count as a candidate (tests/test_reliability.py has more)
    study.enqueue_trial(trials[1].params)
    assert run_search(space, trials=6, quiet=True, log=_quiet).ran == 1
    copy = open_study(space, load_only=True).get_trials()[5]
    assert copy.user_attrs["duplicate_of"] == 1 and copy.values == trials[1].values


def test_failing_trials_are_recorded_and_the_run_finishes(tmp_path):
    space = load_space(_space_file(tmp_path, trials=3), ["finetune.lr=1e30"])
    summary = run_search(space, quiet=True, log=_quiet)
    assert summary.done == 3
    trials = open_study(space, load_only=True).get_trials()
    assert all(t.state == TrialState.FAIL for t in trials)
    assert all("DivergedError" in t.user_attrs["fail_reason"] for t in trials)


def test_early_stop_floor_stops_trials(tmp_path):
    space = load_space(_space_file(tmp_path, steps=4, trials=2),
                       ["finetune.min_accuracy=1.0", "finetune.check_at=0.5"])
    run_search(space, quiet=True, log=_quiet)
    trials = open_study(space, load_only=True).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert "< floor 1.0000 after 2 fine-tune steps" in trials[0].user_attrs["stopped_reason"]


def test_greedy_rule_on_a_scripted_accuracy():
    # a swap of b3 or b5 costs too much accuracy; b5 becomes fine once b1 is not swapped...
    # the scripted model: accuracy = 0.9 - 0.05 per swapped block - 0.3 if b3 swapped
    calls = []

    def evaluate(swapped, block, step, direction):
        calls.append((block, direction, sorted(swapped)))
        acc = 0.9 - 0.05 * len(swapped) - (0.3 if "b3" in swapped else 0)
        return acc, step

    kept, steps = greedy_rule(["b1", "b2", "b3", "b4", "b5"], evaluate, threshold=0.74)
    # top-down: b1 (0.85) keep, b2 (0.80) keep, b3 (0.45) revert, b4 (0.75) keep,
    # b5 (0.70) revert; bottom-up over the rest: b5 (0.70) revert, b3 (0.45) revert
    assert kept == ["b1", "b2", "b4"]
    assert [(s.block, s.direction, s.kept) for s in steps] == [
        ("b1", "down", True), ("b2", "down", True), ("b3", "down", False),
        ("b4", "down", True), ("b5", "down", False), ("b5", "up", False), ("b3", "up", False)]
    assert calls[3] == ("b4", "down", ["b1", "b2", "b4"])


def test_greedy_bottom_up_can_keep_a_reverted_block():
    def evaluate(swapped, block, step, direction):  # b1 only passes once b3 is swapped
        return (0.9 if block != "b1" or "b3" in swapped else 0.5), step

    kept, steps = greedy_rule(["b1", "b2", "b3"], evaluate, threshold=0.7)
    assert kept == ["b1", "b2", "b3"]
    assert [(s.block, s.direction) for s in steps][-1] == ("b1", "up")


@pytest.mark.slow
def test_greedy_strategy_in_the_study(tmp_path, capsys):
    space = load_space(_space_file(tmp_path, steps=2))
    summary = run_search(space, strategy="greedy", threshold=0.0, quiet=True, log=_quiet)
    assert summary.greedy["kept"] == [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert summary.done == 8  # one trial per block, all kept: no bottom-up pass
    res = load_results(space)
    assert res.greedy["trial"] == summary.greedy["result_trial"]
    assert all(v == {"conv": "separable"} for v in res.greedy["recipe"].values())
    assert main(["front", str(space.file)]) == 0
    assert "greedy" in capsys.readouterr().out


@pytest.mark.slow
def test_dashboard_answers_on_localhost(tmp_path):
    import socket
    import urllib.request

    space = load_space(_space_file(tmp_path, steps=1, trials=1))
    run_search(space, quiet=True, log=_quiet)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "searchcomp", "dashboard", str(space.file),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=2) as resp:
                    body = json.loads(resp.read())
            except OSError:
                time.sleep(0.3)
        assert body is not None, "dashboard did not answer"
        study = next(s for s in body["study_summaries"] if s["study_name"] == "tiny-search")
        assert study["directions"] == ["maximize", "minimize", "minimize"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/"
                                    f"{study['study_id']}", timeout=10) as resp:
            detail = json.loads(resp.read())
        assert detail["objective_names"] == list(space.objectives)
        attrs = {a["key"] for a in detail["trials"][0]["user_attrs"]}
        assert {"recipe", "accuracy", "size_mib", "latency_ms", "weights"} <= attrs
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert f"http://127.0.0.1:{port}/dashboard" in proc.stderr.read()


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["nsga3", "tpe", "gp", "random"])
def test_every_sampler_runs(tmp_path, sampler):
    space = load_space(_space_file(tmp_path, steps=1, trials=3),
                       ["search.seed_configs=[]", "constraints.max_accuracy_drop=0.5"])
    summary = run_search(space, sampler=sampler, quiet=True, log=_quiet)
    assert summary.done == 3
    trials = open_study(space, load_only=True).get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all("max_accuracy_drop" in t.constraints for t in trials)


@pytest.mark.slow
def test_greedy_rerun_with_another_threshold_does_not_reuse_other_paths(tmp_path):
    space = load_space(_space_file(tmp_path, steps=1))
    strict = run_search(space, strategy="greedy", threshold=1.01, quiet=True, log=_quiet)
    assert strict.greedy["kept"] == [] and strict.greedy["result_trial"] is None
    loose = run_search(space, strategy="greedy", threshold=0.0, quiet=True, log=_quiet)
    assert len(loose.greedy["kept"]) == 8
    study = open_study(space, load_only=True)
    result = study.trials[loose.greedy["result_trial"]]
    assert len(result.user_attrs["recipe"]["blocks"]) == 8  # every block really swapped


def test_interrupted_seed_is_queued_again(tmp_path):
    from searchcomp.search.seeds import enqueue_seeds
    from searchcomp.search.trial import prepare

    space = load_space(_space_file(tmp_path, steps=1))
    ctx = prepare(space, progress=False, log=_quiet)
    study = open_study(space)
    from searchcomp.search.seeds import anchor_recipes

    # the base and the anchors ({conv: separable}, the space's seed, is an anchor already)
    assert enqueue_seeds(study, ctx) == 1 + len(anchor_recipes(ctx))
    assert enqueue_seeds(study, ctx) == 0  # already queued
    base = study.ask()  # as a run would, then Ctrl-C: Optuna marks it FAIL, not counted
    study.tell(base, state=TrialState.FAIL)
    assert enqueue_seeds(study, ctx) == 1


def test_seeds_queued_only_as_far_as_the_budget_has_room(tmp_path):
    from searchcomp.search.seeds import enqueue_seeds
    from searchcomp.search.trial import prepare

    space = load_space(_space_file(tmp_path, steps=1))
    ctx = prepare(space, progress=False, log=_quiet)
    study = open_study(space)
    assert enqueue_seeds(study, ctx, n_trials=1) == 1  # the base first; no room for more
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["tag"] for t in waiting] == ["base"]
    assert enqueue_seeds(study, ctx, n_trials=1) == 0  # the queued base takes the room
    from searchcomp.search.seeds import anchor_recipes

    n = len(anchor_recipes(ctx))
    assert enqueue_seeds(study, ctx, n_trials=n + 1) == n  # a larger budget: the rest


def test_changing_constraints_on_a_study_is_refused(tmp_path):
    from searchcomp.errors import SearchcompError

    space = load_space(_space_file(tmp_path, steps=1, trials=1))
    run_search(space, quiet=True, log=_quiet)
    other = load_space(space.file, ["constraints.max_params=5000000"])
    with pytest.raises(SearchcompError, match="constraints"):
        open_study(other)


def test_a_compute_budget_sizes_the_sampler(tmp_path, monkeypatch):
    """A budget of full fine-tunes ends a ``search`` before ``--trials``: NSGA-II's population
    and TPE's start-up follow the budget (sized on 400 trials, a budget of 20 gave NSGA-II a
    population of 50, so it never bred)."""
    import searchcomp.search.api as api
    from searchcomp.search.samplers import make_sampler

    assert api.sampler_trials(400, "search", 20) == 20
    assert api.sampler_trials(400, "search", 2.5) == 3
    assert api.sampler_trials(10, "search", 20) == 10
    assert api.sampler_trials(400, "search", None) == 400
    assert api.sampler_trials(400, "rungs", 20) == 400  # rungs: many more candidates
    seen = {}

    class Opened(Exception):
        pass

    real = api.open_study

    def opened(*args, **kwargs):
        if kwargs.get("load_only"):  # the stored base, looked up first
            return real(*args, **kwargs)
        seen.update(kwargs)
        raise Opened

    monkeypatch.setattr(api, "open_study", opened)
    space = load_space(_space_file(tmp_path, steps=1))
    with pytest.raises(Opened):
        run_search(space, trials=400, budget=20, quiet=True, log=_quiet)
    assert seen["n_trials"] == 20
    assert make_sampler("nsga2", 0, seen["n_trials"], None)._population_size == 5
