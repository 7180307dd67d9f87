"""The preparation workers of a study share: the base's figures, left in the study folder
under the key they were measured with, are reused only under that key."""

from __future__ import annotations

from searchcomp.config import load_space
from searchcomp.search import shared


def test_base_figures_are_reused_only_under_their_key(tiny_space_file):
    space = load_space(tiny_space_file)
    key = {"weights": "abc", "measure": space.measure.model_dump(mode="json")}
    assert shared.known_figures(space, None, key, None) is None  # nothing left yet
    shared.store_figures(space, None, key, {"latency_ms": 1.5})
    assert shared.known_figures(space, None, key, None)["metrics"] == {"latency_ms": 1.5}
    # other weights, or other measure settings: measured again
    assert shared.known_figures(space, None, {**key, "weights": "abd"}, None) is None
    other = {**key, "measure": {**key["measure"], "threads": 2}}
    assert shared.known_figures(space, None, other, None) is None
    # the caller's own figures (from the study) first, when they match
    mine = {"key": key, "metrics": {"latency_ms": 1.2}}
    assert shared.known_figures(space, None, key, mine) is mine
    # another study's folder holds its own figures
    assert shared.known_figures(space, "another", key, None) is None


def test_local_workers_split_the_cores(tmp_path, monkeypatch):
    import torch

    from searchcomp.search.shared import THREAD_VARS, CoreShare

    for v in THREAD_VARS:
        monkeypatch.delenv(v, raising=False)
    torch.set_num_threads(2)
    # a worker that died left its file, unlocked: it is not counted, and it is removed
    (tmp_path / ".workers").mkdir()
    dead = tmp_path / ".workers" / f"{CoreShare(tmp_path).host}-1-dead"
    dead.write_text("")
    with CoreShare(tmp_path) as a:
        assert a.live() == 1 and not dead.exists()
        assert a.apply() == 2
        with CoreShare(tmp_path) as b:
            assert a.live() == b.live() == 2
            assert a.apply() == 1 and torch.get_num_threads() == 1
        assert a.live() == 1 and a.apply() == 2
    assert torch.get_num_threads() == 2 and not list((tmp_path / ".workers").iterdir())
    # a thread count the user set is theirs
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with CoreShare(tmp_path) as a, CoreShare(tmp_path) as b:
        assert a.apply() == b.apply() == 2
