"""The shared finished study fixture is what the export and report tests expect."""

from searchcomp.results.study import load_results


def test_finished_study_has_front_and_greedy(finished_study):
    res = load_results(finished_study)
    assert len([r for r in res.rows if r["strategy"] != "greedy"]) == 6
    assert res.front and res.greedy and res.greedy["trial"] is not None
