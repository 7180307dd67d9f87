"""Every figure with its uncertainty: accuracy intervals, latency dispersion, the noise-aware
front, confirmation runs."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from searchcomp.measure import latency as latency_mod
from searchcomp.measure.intervals import (
    accuracy_noise,
    binomial_se,
    difference_noise,
    spread,
    wilson_interval,
)
from searchcomp.search.front import hypervolume, hypervolume_interval, noise_front, pareto_front


def test_wilson_interval_contains_the_estimate_and_shrinks_with_more_images():
    widths = []
    for n in (100, 1000, 10000):
        lo, hi = wilson_interval(0.84, n)
        assert lo < 0.84 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # 0.84 on 2,000 images: standard error 0.8 pt, so the 95 % interval is about +-1.6 pt
    lo, hi = wilson_interval(0.84, 2000)
    assert 0.015 < (hi - lo) / 2 < 0.017
    assert binomial_se(0.84, 2000) == pytest.approx(0.0082, abs=2e-4)
    # at the edges the interval stays inside [0, 1] and still contains the estimate
    assert wilson_interval(1.0, 50)[1] == 1.0 and wilson_interval(1.0, 50)[0] < 1.0
    assert wilson_interval(0.0, 50) [0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)


def test_spread_of_runs():
    s = spread([0.80, 0.82, 0.84])
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    assert (s.low, s.high) == (0.80, 0.84)
    assert s.mean_low < 0.82 < s.mean_high
    one = spread([0.5])
    assert one.std == 0 and one.mean_low is None


def test_seed_spread_adds_to_the_noise():
    alone = {"accuracy": 0.84, "val_images": 2000}
    confirmed = {**alone, "accuracy_runs": 3, "accuracy_std": 0.02}
    assert accuracy_noise(confirmed) > accuracy_noise(alone) > 0
    assert accuracy_noise({"accuracy": 0.84}) == 0  # an old study: no images recorded
    assert difference_noise(alone, alone) == pytest.approx(1.96 * 2 ** 0.5 * binomial_se(0.84,
                                                                                         2000),
                                                           rel=1e-3)


def test_latency_p10_p90_come_from_the_timed_runs(monkeypatch):
    import torch

    times = [float(t) for t in range(1, 31)]  # 1..30 ms
    monkeypatch.setattr(latency_mod, "time_runs", lambda fn, runs, warmup: list(times))
    lat = latency_mod.time_latency(torch.nn.Linear(4, 2), (4,), runs=30, warmup=0)
    assert lat.p10_ms == latency_mod.percentile(times, 0.1) == 4.0
    assert lat.p90_ms == 27.0 and lat.median_ms == 15.5
    assert lat.under_load  # p90 / median = 1.74
    quiet = [10.0] * 27 + [10.5, 11.0, 30.0]
    monkeypatch.setattr(latency_mod, "time_runs", lambda fn, runs, warmup: list(quiet))
    lat = latency_mod.time_latency(torch.nn.Linear(4, 2), (4,), runs=30, warmup=0)
    assert not lat.under_load and lat.p10_ms == 10.0


def _row(n, acc, mib, images=2000, **kw):
    return {"trial": n, "accuracy": acc, "size_mib": mib, "val_images": images, **kw}


def test_noise_front_marks_a_point_within_noise_of_a_better_one():
    rows = [_row(0, 0.840, 10.0),   # beaten by 1, but only by 0.5 pt on 2,000 images: kept
            _row(1, 0.845, 10.0),
            _row(2, 0.700, 10.0),   # beaten by 14 pt: out
            _row(3, 0.830, 5.0),    # smaller: on the front; trial 1 leads it by 1.5 pt only
            _row(4, 0.846, 12.0)]   # bigger and within noise of 1, but not dominated by it
    objectives = ["accuracy", "size_mib"]
    assert [r["trial"] for r in pareto_front(rows, objectives)] == [4, 1, 3]
    front = {r["trial"]: r for r in noise_front(rows, objectives)}
    assert set(front) == {0, 1, 3, 4}
    assert front[0]["within_noise_of"] == [1] and front[1]["within_noise_of"] == []
    assert front[1]["lead_within_noise_over"] == [3]
    assert front[3]["lead_within_noise_over"] == []
    # a cost beaten for sure (MiB is exact) removes a point whatever its accuracy noise
    assert 2 not in front
    # with many more images the noise shrinks below 0.5 pt: the plain front again
    precise = [{**r, "val_images": 10 ** 7} for r in rows]
    assert [r["trial"] for r in noise_front(precise, objectives)] == [4, 1, 3]


def test_noise_front_uses_the_latency_spread():
    a = _row(0, 0.84, 10.0, latency_ms=5.0, latency_p10_ms=4.0, latency_p90_ms=6.0)
    b = _row(1, 0.84, 10.0, latency_ms=4.8, latency_p10_ms=4.6, latency_p90_ms=5.0)
    c = _row(2, 0.84, 10.0, latency_ms=2.0, latency_p10_ms=1.9, latency_p90_ms=2.1)
    objectives = ["accuracy", "size_mib", "latency_ms"]
    assert [r["trial"] for r in noise_front([a, b], objectives)] == [1, 0]
    assert [r["trial"] for r in noise_front([a, b, c], objectives)] == [2]


def test_hypervolume_interval_from_repeated_runs():
    base = {"accuracy": 0.9, "size_mib": 10.0}
    rows = [_row(0, 0.80, 5.0), _row(1, 0.70, 2.0)]
    hv = hypervolume(rows, ["accuracy", "size_mib"], base)
    lo, hi = hypervolume_interval(rows, {0: [0.78, 0.80, 0.82]}, ["accuracy", "size_mib"], base)
    assert lo < hv < hi
    lo2, hi2 = hypervolume_interval(rows, {}, ["accuracy", "size_mib"], base)
    assert lo2 == pytest.approx(hv) and hi2 == pytest.approx(hv)


def test_confirmation_trials_are_linked_and_not_counted():
    from searchcomp.search.confirm import _create, confirm_seed, missing_runs
    from searchcomp.search.states import CONFIRM_OF, is_done, is_repeat, is_running_search
    from searchcomp.search.storage import study_on

    study = study_on(optuna.storages.InMemoryStorage(), directions=["maximize"])
    dist = {"layer1/conv": CategoricalDistribution(["keep", "separable"])}
    study.add_trial(create_trial(params={"layer1/conv": "separable"}, distributions=dist,
                                 values=[0.8], user_attrs={"accuracy": 0.8, "seed": 7}))
    original = study.get_trials()[0]
    assert missing_runs(study, [0], 2) == [(0, 1), (0, 2)]
    trial = _create(study, original, 1)
    running = study.get_trials()[-1]
    assert running.state == TrialState.RUNNING and not is_running_search(running)
    assert missing_runs(study, [0], 2) == [(0, 2)]  # a live run is not made twice
    study.tell(trial, [0.78])
    done = study.get_trials()[-1]
    assert done.user_attrs[CONFIRM_OF] == 0 and done.user_attrs["strategy"] == "confirm"
    assert done.params == original.params
    assert is_repeat(done.user_attrs) and not is_done(done) and is_done(original)
    assert done.user_attrs["seed"] == confirm_seed(original, 1) != confirm_seed(original, 2)
    assert confirm_seed(original, 1) != 7


def test_confirm_runs_are_resumable_and_outside_the_budget(finished_study, tmp_path):
    """``front --confirm``: linked runs, only missing ones made, the search budget untouched,
    and the front shows means, spreads and intervals (on a copy of the shared study)."""
    import shutil

    from searchcomp.config import load_space
    from searchcomp.results.study import load_results
    from searchcomp.search.api import confirm_study, run_search
    from searchcomp.search.study import done_trials, open_study

    shutil.copytree(finished_study.studies_dir, tmp_path / "studies")
    space = load_space(finished_study.file, [f"studies_dir={tmp_path / 'studies'}"])
    study = open_study(space, load_only=True)
    done = len(done_trials(study))
    front = [r["trial"] for r in load_results(space).front][:2]
    quiet = {"log": lambda m: None, "progress": False}
    assert confirm_study(space, front, 1, **quiet) == len(front)
    assert confirm_study(space, front, 1, **quiet) == 0  # resumed: nothing missing
    assert confirm_study(space, front, 2, **quiet) == len(front)  # only run 2 of each
    assert len(done_trials(study)) == done
    assert run_search(space, trials=done, quiet=True, log=lambda m: None).ran == 0
    res = load_results(space)
    runs = [r for r in res.rows if r.get("confirm_of") is not None]
    assert sorted((r["confirm_of"], r["confirm_run"]) for r in runs) == sorted(
        (n, k) for n in front for k in (1, 2))
    for r in res.front:
        assert r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"]
        if r["trial"] in front and "accuracy_runs" in r:
            assert r["accuracy_runs"] == 3
            assert r["accuracy_min"] <= r["accuracy"] <= r["accuracy_max"]
    assert res.hypervolume_interval is not None
    text = res.to_text()
    assert "runs: 3 fine-tunes, mean" in text and "95 % interval" in text
    js = res.to_json()
    assert js["hypervolume_interval"] and all("accuracy_low" in p for p in js["front"])
    # the export card's test accuracy carries its own interval
    from searchcomp.results.export import export_trial

    card = export_trial(space, front[0], tmp_path / "out", None, 0, None, None,
                        log=lambda m: None, progress=False)
    lo, hi = card["exported"]["test_accuracy_interval"]
    assert lo <= card["exported"]["test_accuracy"] <= hi
    assert f"[{lo:.4f}, {hi:.4f}]" in (tmp_path / "out" / "card.md").read_text()


def test_confirm_must_be_positive(tiny_space_file, capsys):
    from searchcomp.cli import main

    assert main(["front", str(tiny_space_file), "--confirm", "0"]) == 2
    assert "--confirm must be >= 1" in capsys.readouterr().err


DEFAULT_FT_SPACE = """\
name: harmless
model: {{arch: "tests.tiny_factory:tiny_cnn", num_classes: 10, in_channels: 1, image_size: 8,
        kwargs: {{width: 8}}}}
data: {{dataset: digits, train_size: 1000, val_size: 400, test_size: 200, batch_size: 50}}
base: {{source: train, epochs: 15, lr: 0.05}}
blocks: {{default: {{conv: [keep, separable], prune: [0.0], bits: [32]}}, head: [keep]}}
finetune: {{steps: 40}}
measure: {{runs: 30, warmup: 1}}
studies_dir: {studies}
"""


def test_default_finetune_does_not_lower_an_unchanged_base(tmp_path):
    """The shipped fine-tune settings (only the step count set) keep an unchanged tiny base
    within the 95 % interval of its own validation accuracy."""
    from searchcomp.candidate import Recipe
    from searchcomp.config import load_space
    from searchcomp.search.trial import prepare, run_trial

    p = tmp_path / "harmless.yaml"
    p.write_text(DEFAULT_FT_SPACE.format(studies=tmp_path / "studies"))
    ctx = prepare(load_space(p), progress=False, log=lambda m: None)
    base = ctx.base_metrics
    assert base["accuracy"] > 0.6  # a base worth keeping
    assert base["accuracy_low"] < base["accuracy"] < base["accuracy_high"]
    for seed in (1, 2):
        acc = run_trial(ctx, Recipe(), seed, f"t{seed}").metrics["accuracy"]
        assert acc >= base["accuracy_low"], (acc, base)
