"""Budget questions on a fixture study (no training): the best measured point inside the
limits, and the predictor's best recipe not run yet, checked against brute force."""

from __future__ import annotations

import itertools
import json

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from searchcomp.candidate import Recipe
from searchcomp.cli import main
from searchcomp.config import load_space
from searchcomp.models import build_model, find_blocks, find_head, input_shape
from searchcomp.predict.budget import Budget
from searchcomp.predict.costs import ShapeCosts
from searchcomp.predict.layout import Layout
from searchcomp.predict.sensitivity import SECTION, accuracy_context, row_key, wanted_rows
from searchcomp.predict.store import ProfileStore
from searchcomp.results.budget import answer_budget
from searchcomp.search.runner import block_params, recipe_params
from searchcomp.search.study import open_study

from .test_profile import _space_file


@pytest.fixture
def fixture_study(tmp_path):
    """A study of 6 made-up trials over a 2-block space (exact costs, chosen accuracies)."""
    space = load_space(_space_file(tmp_path))
    model = build_model(space.model).eval()
    blocks = find_blocks(model, space)
    head, _ = find_head(model, space)
    costs = ShapeCosts(model, blocks, head, input_shape(space.model))
    base = {**costs.base, "accuracy": 0.80, "latency_ms": 10.0}
    study = open_study(space)
    study.set_user_attr("base", base)
    study.set_user_attr("objectives", list(space.objectives))
    recipes = [
        (Recipe(), 0.80, 10.0),
        (Recipe({"layer1.0": {"bits": 8}, "layer1.1": {"bits": 8}}), 0.79, 9.0),
        (Recipe({"layer1.0": {"conv": "separable"}}), 0.78, 8.0),
        (Recipe({"layer1.0": {"conv": "separable", "bits": 8},
                 "layer1.1": {"conv": "separable", "bits": 8}}), 0.74, 6.0),
        (Recipe({"layer1.0": {"prune": 0.5, "bits": 8}, "layer1.1": {"bits": 8}}), 0.77, 8.5),
        (Recipe({"layer1.1": {"prune": 0.5}}), 0.76, 9.5),
    ]
    dist = {f"{b.name}/{c}": CategoricalDistribution(list(b.allowed(c)))
            for b in blocks for c in block_params(b)} | {
        "head": CategoricalDistribution(list(space.blocks.head))}
    for recipe, acc, lat in recipes:
        m = {**costs.exact(recipe), "accuracy": acc, "latency_ms": lat}
        study.add_trial(optuna.trial.create_trial(
            params=recipe_params(recipe, blocks, space.blocks.head), distributions=dist,
            values=[m[o] for o in space.objectives],
            user_attrs={**m, "recipe": recipe.to_dict(), "feasible": True,
                        "summary": recipe.summary([b.name for b in blocks])}))
    return space, model, blocks, head, costs, base


def test_best_measured_point_in_the_budget(fixture_study, capsys):
    space, *_ = fixture_study
    mib = {t.number: t.user_attrs["size_mib"] for t in open_study(space, load_only=True).trials}
    # trials 1, 3 and 4 are at most this size (8-bit weights in both blocks); 1 is the most
    # accurate of them
    limit = (mib[1] + mib[2]) / 2
    assert sorted(t for t, v in mib.items() if v <= limit) == [1, 3, 4]
    ans = answer_budget(space, Budget({"size_mib": limit}))
    assert ans.measured["trial"] == 1 and ans.in_budget == 3
    ans = answer_budget(space, Budget({"size_mib": limit, "latency_ms": 8.6}))
    assert ans.measured["trial"] == 4
    ans = answer_budget(space, Budget({"latency_ms": 8.6}, min_accuracy=0.775))
    assert ans.measured["trial"] == 2
    assert answer_budget(space, Budget({"latency_ms": 1.0})).measured is None
    # no profile yet: the answer says how to get predictions
    assert ans.candidate is None and "searchcomp profile" in ans.notes[0]
    assert main(["front", str(space.file), "--max-latency-ms", "8.6", "--min-accuracy",
                 "0.775"]) == 0
    assert "best measured: trial 2" in capsys.readouterr().out
    assert main(["front", str(space.file), "--max-size-mib", "-1"]) == 2


def test_predicted_best_unmeasured_recipe_in_the_budget(fixture_study, capsys):
    space, model, blocks, head, costs, base = fixture_study
    # a made-up sensitivity table: every change costs accuracy, separable the most
    store = ProfileStore.of_study(space.study_dir())
    layout = Layout.from_blocks(blocks, space.blocks.head)
    ctx = accuracy_context(space)
    drop = {"conv": 0.03, "prune": 0.02, "bits": 0.004, "head": 0.01}
    for i, (b, c, v) in enumerate(wanted_rows(layout, head)):
        acc = 0.80 if not b else 0.80 - drop[c] - 0.001 * i
        store.put(SECTION, row_key(ctx, b, c, v), {"accuracy": acc}, save=False)
    store.save()
    limit = base["size_mib"] - 0.35  # 8-bit weights in both blocks, or more
    ans = answer_budget(space, Budget({"size_mib": limit}))
    c = ans.candidate
    assert c is not None and c["size_mib"] <= limit
    recipe = Recipe.from_dict(c["recipe"])
    assert c["size_mib"] == pytest.approx(costs.exact(recipe)["size_mib"])  # exact, not guessed
    lo, hi = c["accuracy_interval"]
    assert lo < c["accuracy"] < hi
    # brute force over the whole space: no recipe not run yet is predicted better in budget
    from searchcomp.predict.assemble import open_tables

    tables = open_tables(space, model, blocks, head)
    pred = tables.predictor(base)
    study = open_study(space, load_only=True)
    done = np.array([layout.encode(t.user_attrs["recipe"]) for t in study.trials])
    pred.fit(done, np.array([t.user_attrs["accuracy"] for t in study.trials]),
             np.array([t.user_attrs["latency_ms"] for t in study.trials]))
    rows = np.array(list(itertools.product(*[range(d) for d in layout.dims])))
    ran = {r.tobytes() for r in done}
    p = pred.predict(rows)
    ok = (p["size_mib"] <= limit) & np.array([r.tobytes() not in ran for r in rows])
    assert c["accuracy"] == pytest.approx(p["accuracy"][ok].max())
    assert main(["front", str(space.file), "--max-size-mib", str(limit), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predicted"]["recipe"] == c["recipe"] and out["measured"]["trial"] == 1


def test_run_options_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    spec = str(_space_file(tmp_path))
    for argv, why in ((["--target", "size_mib<=2", "--sampler", "nsga2"], "--target steers"),
                      (["--target", "size<=2"], "not a limit"),
                      (["--threshold", "0.5"], "for --strategy greedy"),
                      (["--strategy", "greedy", "--threshold", "0.5", "--max-drop", "0.1"],
                       "not both")):
        assert main(["run", spec, *argv]) == 2
        assert why in capsys.readouterr().err
