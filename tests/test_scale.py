"""Scaling out: Ray Tune trials on one study (several workers and faults: test_reliability.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from searchcomp.config import load_space
from searchcomp.results.study import load_results
from searchcomp.search.study import done_trials, open_study

from .test_search import _space_file


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray Tune not installed (pip install -e .[ray])")
@pytest.mark.slow
def test_ray_backend_two_concurrent_trials(tmp_path):
    spec = _space_file(tmp_path, steps=2, trials=4)
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    r = subprocess.run([sys.executable, "-m", "searchcomp", "run", str(spec), "--backend", "ray",
                        "--concurrency", "2", "--cpus-per-trial", "1", "--quiet"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "up to 2 trials at once" in r.stderr
    space = load_space(spec)
    study = open_study(space, load_only=True)
    done = done_trials(study)
    assert len(done) == 4
    assert all(t.state == TrialState.COMPLETE for t in done)
    # the same user attributes as a local run
    for t in done:
        assert {"recipe", "summary", "accuracy", "size_mib", "latency_ms", "weights",
                "latency_runtime", "init_errors"} <= set(t.user_attrs)
    assert done[0].user_attrs["tag"] == "base"
    # two trials really ran at the same time, in two processes
    spans = sorted((t.user_attrs["started_at"], t.user_attrs["finished_at"],
                    t.user_attrs["worker"]) for t in done)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:]
                   if b[0] < a[1] and a[2] != b[2]]
    assert overlapping, spans
    # Ray reuses its worker processes (and the context each prepared) from trial to trial
    assert len({t.user_attrs["worker"] for t in done}) <= 2, spans
    res = load_results(space)
    assert {r["trial"] for r in res.rows} == {t.number for t in done}
