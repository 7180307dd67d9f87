"""Defects found by reading (issue 20, item 5), each shown by a test: feasibility after the
quiet re-measurement and the confirmation runs, a bug stopping the run, the stale check's
reason on a trial that finished meanwhile, the profile store under concurrent writers."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState, create_trial

from searchcomp.config import load_space
from searchcomp.predict.store import ProfileStore
from searchcomp.results.study import load_results
from searchcomp.search.api import run_search
from searchcomp.search.lease import HEARTBEAT, fail_stale_trials
from searchcomp.search.remeasure import QUIET_KEY, remeasure_front
from searchcomp.search.states import CONFIRM_OF, CONFIRM_RUN, fail_reason, is_done
from searchcomp.search.storage import storage_of, study_on, trial_id
from searchcomp.search.study import open_study, trial_row

SPACE = """\
name: feas
model: {{arch: "tests.tiny_factory:tiny_cnn", num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 100, val_size: 100, test_size: 100}}
blocks: {{select: ["0", "1"], default: {{conv: [keep, separable]}}}}
objectives: [accuracy, latency_ms]
constraints: {{max_latency_ms: 10, max_accuracy_drop: 0.05}}
studies_dir: {studies}
"""
DIST = {"0/conv": CategoricalDistribution(["keep", "separable"])}


def _trial(study: optuna.Study, conv: str, acc: float, ms: float, feasible: bool,
           **attrs) -> None:
    recipe = {"blocks": {} if conv == "keep" else {"0": {"conv": conv}}, "head": "keep"}
    study.add_trial(create_trial(
        params={"0/conv": conv}, distributions=DIST, values=[acc, ms],
        user_attrs={"recipe": recipe, "summary": conv, "accuracy": acc, "latency_ms": ms,
                    "params": 1000, "size_mib": 0.01, "flops": 1, "feasible": feasible,
                    "val_images": 100, **attrs}))


def test_feasibility_follows_the_quiet_latency_and_the_confirmation_mean(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SPACE.format(studies=tmp_path / "studies"))
    space = load_space(p)
    study = open_study(space)
    study.set_user_attr("base", {"accuracy": 0.80, "latency_ms": 9.0, "params": 2000,
                                 "size_mib": 0.02, "flops": 2})
    # trial 0: 12 ms in trial (infeasible) but 6 ms when measured again quietly
    _trial(study, "keep", 0.80, 12.0, feasible=False)
    # trial 1: 0.79 in the search (feasible), but its confirmation runs average 0.70
    _trial(study, "separable", 0.79, 5.0, feasible=True)
    for k, acc in ((1, 0.66), (2, 0.65)):
        _trial(study, "separable", acc, 5.0, feasible=False,
               **{CONFIRM_OF: 1, CONFIRM_RUN: k, "strategy": "confirm"})
    study.set_user_attr(QUIET_KEY, {"0": {"latency_ms": 6.0}})
    res = load_results(space)
    assert [r["trial"] for r in res.front] == [0]
    assert res.row(0)["feasible"] is True  # the rows the budget answers read, too


def test_a_point_over_the_latency_limit_in_its_trial_is_measured_again_and_joins(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SPACE.format(studies=tmp_path / "studies"))
    space = load_space(p)
    study = open_study(space)
    base = {"accuracy": 0.80, "latency_ms": 9.0, "params": 2000, "size_mib": 0.02, "flops": 2}
    study.set_user_attr("base", base)
    _trial(study, "keep", 0.80, 12.0, feasible=False)  # timed under load in its trial
    _trial(study, "separable", 0.78, 9.0, feasible=True)
    quiet = {0: 6.0, 1: 9.0}
    asked: list[int] = []

    def measure(points, with_base):  # the quiet figures (a machine with no trial running)
        asked.extend(pt["trial"] for pt in points)
        out = {str(pt["trial"]): {"latency_ms": quiet[pt["trial"]]} for pt in points}
        return {**out, **({"base": {"latency_ms": 9.0}} if with_base else {})}

    remeasure_front(study, space, base, measure, log=lambda m: None)
    assert 0 in asked
    assert [r["trial"] for r in load_results(space).front] == [0]


BUG_SPACE = """\
name: bug
model: {{arch: "tests.tiny_factory:tiny_cnn", num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 100, val_size: 50, test_size: 50, batch_size: 50}}
base: {{source: train, epochs: 1}}
blocks: {{select: ["0", "1"], default: {{conv: [keep, separable, bugsim]}}}}
finetune: {{steps: 1}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: 4, anchors: false, seed_configs: [{{conv: bugsim}}]}}
studies_dir: {studies}
"""


@pytest.fixture
def bug_choice():
    """A conv choice whose init has a bug (a TypeError), registered for one test."""
    from searchcomp.choices import register, registry
    from searchcomp.choices.layers.separable import Separable

    class Buggy(Separable):
        name, code, description = "bugsim", "Z", "a separable conv whose init has a bug"

        def initialise(self, new, layer, arg, inputs):
            return len(None)  # TypeError: the kind of mistake a new choice makes

    register(Buggy)
    yield "bugsim"
    registry._REGISTRY.pop(("conv", "bugsim"), None)


def test_a_bug_stops_the_run_with_its_traceback_and_is_not_counted(tmp_path, bug_choice):
    p = tmp_path / "s.yaml"
    p.write_text(BUG_SPACE.format(studies=tmp_path / "studies"))
    space = load_space(p)
    with pytest.raises(TypeError, match="has no len"):
        run_search(space, quiet=True, log=lambda m: None)
    trials = open_study(space, load_only=True).get_trials()
    assert len(trials) == 2  # the base, then the bug: no trial after it
    bug = trials[1]
    assert bug.state == TrialState.FAIL and not is_done(bug)
    assert "TypeError" in fail_reason(bug) and "a bug" in fail_reason(bug)


class _Racing(InMemoryStorage):
    """A storage where the trial's own worker tells it COMPLETE just before the stale check
    changes its state: the interleaving two processes can produce."""

    race = None

    def set_trial_state_values(self, trial_id, state, values=None):
        if state == TrialState.FAIL and self.race is not None:
            race, self.race = self.race, None
            race()
        return super().set_trial_state_values(trial_id, state, values)


def test_a_trial_that_finishes_while_it_is_failed_as_stale_keeps_no_reason():
    storage = _Racing()
    study = study_on(storage, directions=["maximize"])
    trial = study.ask()
    trial.suggest_categorical("x", ["a"])
    storage_of(study).set_trial_system_attr(trial_id(study, trial.number), HEARTBEAT,
                                            time.time() - 100)  # silent: looks dead
    storage.race = lambda: study.tell(trial, [0.5])
    assert fail_stale_trials(study, heartbeat_s=1) == []
    t = study.get_trials()[0]
    assert t.state == TrialState.COMPLETE
    assert fail_reason(t) is None and "fail_reason" not in trial_row(t, ["accuracy"])
    # a trial that is really dead is failed with the reason
    dead = study.ask()
    storage_of(study).set_trial_system_attr(trial_id(study, dead.number), HEARTBEAT,
                                            time.time() - 100)
    assert fail_stale_trials(study, heartbeat_s=1) == [dead.number]
    assert "no heartbeat since" in fail_reason(study.get_trials()[1])


def test_two_writers_of_one_profile_file_keep_each_others_rows(tmp_path):
    path = tmp_path / "profile.json"
    a, b = ProfileStore(path), ProfileStore(path)
    a_has_read, b_saved = threading.Event(), threading.Event()
    read = a._read

    def slow_read():  # a is between reading the file and writing it back
        out = read()
        if threading.current_thread().name == "a":
            a_has_read.set()
            b_saved.wait(1.0)
        return out

    a._read = slow_read
    a.data["latency"]["ka"] = {"latency_ms": 1.0}
    writer = threading.Thread(target=a.save, name="a")
    writer.start()
    assert a_has_read.wait(5)
    b.put("latency", "kb", {"latency_ms": 2.0})  # save() while a is mid-merge
    b_saved.set()
    writer.join()
    assert set(ProfileStore(path).rows("latency")) == {"ka", "kb"}
