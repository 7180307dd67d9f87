"""Defects found by reading (issue 20, item 5), each shown by a test: feasibility after the
quiet re-measurement and the confirmation runs, the profile store under concurrent writers."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from searchcomp.config import load_space
from searchcomp.results.study import load_results
from searchcomp.search.remeasure import QUIET_KEY, remeasure_front
from searchcomp.search.states import CONFIRM_OF, CONFIRM_RUN
from searchcomp.search.study import open_study

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
