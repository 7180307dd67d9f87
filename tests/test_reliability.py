"""A study is exact under resume, many workers, Ray and faults: --trials N means N distinct
candidates finished for good, nothing lost or doubled, and a fault never corrupts the study.

The searches here use a tiny CNN on 8x8 digits (two blocks, 36 configurations) so that many
trials, several processes and the injected faults stay within a few seconds each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchcomp.cli import main
from searchcomp.config import load_space
from searchcomp.search.api import run_search
from searchcomp.search.states import fail_reason
from searchcomp.search.storage import storage_of, trial_id
from searchcomp.search.study import done_trials, open_study

from .conftest import ROOT

REL_SPACE = """\
name: rel
model: {{arch: "tests.tiny_factory:tiny_cnn", num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50}}
base: {{source: train, epochs: 1}}
blocks:
  select: ["0", "1"]
  default: {{conv: [keep, separable{conv}], prune: [0.0], bits: [32, 8, 4]}}
  head: [keep]
finetune: {{steps: {steps}}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: {trials}, seed_configs: [{{conv: separable}}, {{bits: 8}}], heartbeat_s: {hb}}}
studies_dir: {studies}
"""


def _space_file(tmp_path: Path, steps: int = 2, trials: int = 8, hb: int = 2,
                conv: str = "") -> Path:
    p = tmp_path / "rel.yaml"
    p.write_text(REL_SPACE.format(steps=steps, trials=trials, hb=hb, conv=conv,
                                  studies=tmp_path / "studies"))
    return p


def _env() -> dict[str, str]:
    """Subprocesses import tests.tiny_factory and this checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def _cli(spec: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "searchcomp", "run", str(spec), "--quiet", *args]


def _key(t: optuna.trial.FrozenTrial) -> tuple:
    """The choices of ``t``; for a queued trial (an anchor, a retry) killed before it
    suggested them, the ones it was given."""
    from searchcomp.search.states import trial_params

    return tuple(sorted(trial_params(t).items()))


def _quiet(_msg: str) -> None:
    pass


def _ran(stderr: str) -> int:
    return int(re.search(r"done: (\d+) trial\(s\) run now", stderr)[1])


def _assert_exact(study: optuna.Study, n: int) -> list[optuna.trial.FrozenTrial]:
    """N done, N distinct configurations, nothing running or queued, no placeholder."""
    done = done_trials(study)
    assert len(done) == n
    assert len({_key(t) for t in done}) == n, "a configuration counted twice"
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not [t.number for t in trials if t.user_attrs.get("skipped")], "placeholders"
    return done


def _wait_for(study_of, predicate, proc, seconds: float = 180):
    """Poll the study (``study_of()`` may fail while it is being created) until
    ``predicate(trials)`` holds or the process ends."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            trials = study_of().get_trials()
        except Exception:
            continue
        if predicate(trials):
            return trials
    return None


def _running(trials) -> bool:
    return any(t.state == TrialState.RUNNING for t in trials)


#: a fine-tune long enough for a fault to land in the middle of a trial
SLOW = ("--set", "finetune.steps=150")


# -- budgets count distinct candidates --------------------------------------------------------

@pytest.mark.slow
def test_resumed_random_search_counts_distinct_candidates_until_exhausted(tmp_path, capsys):
    space = load_space(_space_file(tmp_path), ["blocks.default.bits=[32, 8]"])  # 16 configs
    run_search(space, trials=6, sampler="random", quiet=True, log=_quiet)
    # a resume seeds its sampler from the trial numbers: it does not replay trials 0..5
    second = run_search(space, trials=12, sampler="random", quiet=True, log=_quiet)
    study = open_study(space, load_only=True)
    assert second.ran == 6
    _assert_exact(study, 12)
    assert len(study.get_trials()) == 12
    # asking for more than the space holds stops when every configuration is done
    last = run_search(space, trials=20, sampler="random", quiet=True, log=_quiet)
    assert last.stopped == "exhausted" and last.done == 16
    _assert_exact(open_study(space, load_only=True), 16)
    # the front's latency was measured again, quietly, and front shows both figures
    study = open_study(space, load_only=True)
    quiet = study.user_attrs["quiet_latency"]
    assert main(["front", str(space.file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {str(p["trial"]) for p in out["front"]} <= set(quiet) and "base" in quiet
    for p in out["front"]:
        assert p["latency_ms"] == quiet[str(p["trial"])]["latency_ms"]
        assert p["latency_in_trial_ms"] == study.trials[p["trial"]].user_attrs["latency_ms"]
    assert out["base"]["latency_ms"] == quiet["base"]["latency_ms"]
    assert main(["front", str(space.file), "--remeasure"]) == 0
    captured = capsys.readouterr()
    assert "(in trial" in captured.out and "measured again, quietly" in captured.err


def test_a_queued_copy_of_a_finished_trial_is_answered_and_not_counted(tmp_path):
    space = load_space(_space_file(tmp_path, steps=1, trials=3))
    run_search(space, quiet=True, log=_quiet)
    study = open_study(space, load_only=True)
    first = study.trials[1]
    study.enqueue_trial(first.params)
    summary = run_search(space, trials=4, quiet=True, log=_quiet)
    assert summary.ran == 1 and summary.done == 4  # the copy is not a run, nor counted
    trials = open_study(space, load_only=True).get_trials()
    copy = next(t for t in trials if t.user_attrs.get("duplicate_of") is not None)
    assert copy.user_attrs["duplicate_of"] == 1 and copy.values == first.values
    assert len(trials) == 5


# -- several workers on one storage -------------------------------------------------------

def _workers(spec: Path, storage: str, n: int, tmp_path: Path) -> list[str]:
    procs = [subprocess.Popen(_cli(spec, "--storage", storage), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env())
             for _ in range(n)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, errs
    return errs


def _assert_shared_study(space, storage: str, n: int, errs: list[str]) -> None:
    study = open_study(space, storage=storage, load_only=True)
    done = _assert_exact(study, n)
    assert len(study.get_trials()) == n, "every trial created is a counted candidate"
    assert all(t.state == TrialState.COMPLETE for t in done)
    tags = [t.user_attrs.get("tag") for t in done]
    # the seeds were queued once (the space's {conv: separable} and {bits: 8} are anchors)
    for tag in ("base", "anchor conv=separable", "anchor bits=8"):
        assert tags.count(tag) == 1, tags
    assert sum(_ran(e) for e in errs) == n, errs  # "N run now" counts real runs only


@pytest.mark.slow
def test_four_workers_on_one_journal_run_16_distinct_trials(tmp_path):
    spec = _space_file(tmp_path, trials=16)
    storage = f"journal:{tmp_path / 'shared.log'}"
    errs = _workers(spec, storage, 4, tmp_path)
    _assert_shared_study(load_space(spec), storage, 16, errs)
    # started together, they shared one preparation: one worker trained the base, computed
    # the teacher's logits and measured the base; the others reused all three
    logs = "\n".join(errs)
    assert len(re.findall(r"^base: training \S+ for ", logs, re.M)) == 1, errs
    assert len(re.findall(r"^teacher: logits of the base", logs, re.M)) == 1, errs
    assert len(re.findall(r"^base: reusing cached ", logs, re.M)) == 3, errs
    figures = re.findall(r"^base: val accuracy .*", logs, re.M)
    assert len(figures) == 4 and sum("as measured earlier" in m for m in figures) == 3, errs
    assert len({m.split(" (")[0] for m in figures}) == 1, "one set of base figures"


@pytest.fixture
def postgres_url():
    """A PostgreSQL server on a free localhost port, in a temporary folder, stopped after."""
    from .postgres_server import available, postgres_server

    why = available()
    if why:
        pytest.skip(f"{why}; .ci/run installs both")
    with postgres_server() as url:
        yield url


@pytest.mark.slow
def test_two_workers_on_a_real_postgresql_server(tmp_path, postgres_url):
    spec = _space_file(tmp_path, trials=6)
    errs = _workers(spec, postgres_url, 2, tmp_path)
    _assert_shared_study(load_space(spec), postgres_url, 6, errs)


def test_workers_finishing_last_wait_without_placeholders(tmp_path):
    """A worker whose quota is filled by a trial running elsewhere waits for it, creating no
    trial, and fails it once its heartbeat stops; then it runs the choices itself."""
    from searchcomp.search.lease import HEARTBEAT

    space = load_space(_space_file(tmp_path, steps=1, trials=3, hb=1))
    run_search(space, trials=2, quiet=True, log=_quiet)
    study = open_study(space, load_only=True)
    ghost = study.ask({"head": optuna.distributions.CategoricalDistribution(["keep"])})
    # the ghost's worker beats until ours says it waits for it, then dies (however long our
    # preparation takes on a loaded machine)
    waiting = threading.Event()

    def beat():
        while not waiting.is_set():
            storage_of(study).set_trial_system_attr(trial_id(study, ghost.number), HEARTBEAT,
                                                    time.time())
            waiting.wait(0.2)

    beater = threading.Thread(target=beat)
    beater.start()
    lines: list[str] = []

    def log(m: str) -> None:
        lines.append(m)
        if "waiting for trial(s)" in m:
            waiting.set()

    try:
        summary = run_search(space, trials=3, quiet=True, log=log)
    finally:
        waiting.set()
        beater.join()
    assert summary.done == 3
    trials = open_study(space, load_only=True).get_trials()
    assert "no heartbeat since" in fail_reason(trials[ghost.number])
    assert len(trials) == 4  # the 2 done, the ghost, one new trial: no placeholder
    assert any("waiting for trial(s) [2]" in m for m in lines), lines


# -- faults ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_driver_killed_during_a_trial_then_rerun(tmp_path):
    spec = _space_file(tmp_path, trials=4, hb=1)
    space = load_space(spec)
    run_search(space, trials=1, quiet=True, log=_quiet)
    proc = subprocess.Popen(_cli(spec, *SLOW), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
                            start_new_session=True)
    seen = _wait_for(lambda: open_study(space, load_only=True), _running, proc)
    assert seen is not None, "the run ended before it could be killed: " + proc.stderr.read()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = next(t.number for t in seen if t.state == TrialState.RUNNING)
    r = subprocess.run(_cli(spec), capture_output=True, text=True, timeout=300, env=_env(),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    study = open_study(space, load_only=True)
    done = _assert_exact(study, 4)
    stale = study.trials[killed]
    assert stale.state == TrialState.FAIL and "counted" not in stale.user_attrs
    assert "no heartbeat since" in fail_reason(stale)
    assert f"trial {killed}: no heartbeat since" in r.stderr
    retry = next(t for t in done if t.user_attrs.get("retry_of") == killed)
    assert _key(retry) == _key(stale)  # the killed candidate was run again
    # nothing half-written: every stored weights file loads, no partial file is left
    import torch

    trials_dir = tmp_path / "studies" / "rel" / "trials"
    for t in done:
        torch.load(t.user_attrs["weights"], weights_only=True)
    assert not [p.name for p in trials_dir.iterdir() if ".partial-" in p.name]


def test_a_weights_file_killed_mid_write_is_never_seen_and_is_cleaned_up(tmp_path):
    from searchcomp.search.files import remove_dead_partials

    target = tmp_path / "trials" / "00001-abc.pt"
    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from searchcomp.search.files import write_atomic\n"
            "def write(tmp):\n"
            "    f = open(tmp, 'wb'); f.write(b'half'); f.flush(); print('writing', flush=True)\n"
            "    time.sleep(60)\n"
            f"write_atomic(Path({str(target)!r}), write)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait(timeout=30)
    partial = [p for p in target.parent.iterdir() if ".partial-" in p.name]
    assert not target.exists() and len(partial) == 1
    assert remove_dead_partials(target.parent) == 1
    assert not list(target.parent.iterdir())


@pytest.fixture
def oom_choice():
    """A conv choice whose build runs out of memory (simulated), registered for one test."""
    import torch

    from searchcomp.choices import Choice, register, registry

    class OutOfMemory(Choice):
        name, code, description = "oomsim", "O", "runs out of memory while it is built"
        target, needs_arg = "conv", False

        def check(self, layer, arg):
            return None

        def expected_params(self, layer, arg):
            return 0

        def structure(self, layer, arg):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated in the build)")

        def initialise(self, new, layer, arg, inputs):
            return 0.0

    register(OutOfMemory)
    yield "oomsim"
    registry._REGISTRY.pop(("conv", "oomsim"), None)


@pytest.mark.slow
def test_trials_that_raise_are_recorded_and_the_search_goes_on(tmp_path, oom_choice):
    # out of memory in the build: the trial's own result (a NaN loss: test_search.py)
    space = load_space(_space_file(tmp_path, steps=1, trials=10, conv=", oomsim"),
                       ["search.seed_configs=[]", "blocks.default.bits=[32, 8]"])
    summary = run_search(space, sampler="random", quiet=True, log=_quiet)
    study = open_study(space, load_only=True)
    done = _assert_exact(study, 10)  # a failing configuration is not tried twice either
    failed = [t for t in done if t.state == TrialState.FAIL]
    assert failed and all("OutOfMemoryError: CUDA out of memory (simulated" in
                          t.user_attrs["fail_reason"] for t in failed)
    assert all("oomsim" in json.dumps(t.user_attrs["recipe"]) for t in failed)
    assert any(t.state == TrialState.COMPLETE for t in done) and summary.ran == 10


def _read_only(folder: Path) -> None:
    if os.geteuid() == 0:  # root writes through permissions: make the folder immutable
        r = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot make a folder read-only as root here: {r.stderr!r}")
    else:
        folder.chmod(0o555)


def _writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o755)


@pytest.mark.slow
def test_a_read_only_trials_folder_stops_the_search_and_keeps_the_study(tmp_path):
    spec = _space_file(tmp_path, trials=3)
    space = load_space(spec)
    trials_dir = tmp_path / "studies" / "rel" / "trials"
    run_search(space, trials=1, quiet=True, log=_quiet)
    # the disk refuses a weights file while the search runs
    proc = subprocess.Popen(_cli(spec, *SLOW), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    seen = _wait_for(lambda: open_study(space, load_only=True), _running, proc)
    assert seen is not None, "the run ended before the folder was made read-only: " + \
        proc.stderr.read()
    _read_only(trials_dir)
    try:
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 2, err
        assert "error: cannot write trial weights" in err and "Traceback" not in err
        study = open_study(space, load_only=True)
        refused = [t for t in study.get_trials() if t.state == TrialState.FAIL]
        assert len(refused) == 1 and "counted" not in refused[0].user_attrs
        assert "cannot write trial weights" in refused[0].user_attrs["fail_reason"]
        before = [(t.number, t.state, t.values) for t in study.get_trials()]
        assert done_trials(study)  # what finished before is kept
        # and a new run is refused before any work, leaving the study as it was
        r = subprocess.run(_cli(spec), capture_output=True, text=True, timeout=300,
                           env=_env(), cwd=tmp_path)
        assert r.returncode == 2 and "cannot write trial weights" in r.stderr, r.stderr
        assert "base:" not in r.stderr
        assert [(t.number, t.state, t.values)
                for t in open_study(space, load_only=True).get_trials()] == before
    finally:
        _writable(trials_dir)
    r = subprocess.run(_cli(spec), capture_output=True, text=True, timeout=300, env=_env(),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_exact(open_study(space, load_only=True), 3)


# -- Ray -------------------------------------------------------------------------------------

def _ray_workers(driver_pid: int) -> list[int]:
    """Pids of Ray trial processes started by the driver ``driver_pid``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ImplicitFunc") and driver_pid in _ancestors(int(proc.name)):
            out.append(int(proc.name))
    return out


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.append(pid)
    return chain


needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray Tune not installed (pip install -e .[ray])")


@needs_ray
@pytest.mark.slow
def test_ray_worker_killed_mid_trial_then_driver_killed_then_rerun_without_ray(tmp_path):
    spec = _space_file(tmp_path, trials=2, hb=1)
    space = load_space(spec)

    def study():
        return open_study(space, load_only=True)

    ray_cmd = _cli(spec, "--backend", "ray", "--concurrency", "2", *SLOW)
    # 1. kill -9 one Ray worker in the middle of a trial: the run records it and finishes
    proc = subprocess.Popen(ray_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=tmp_path)
    pids: list[int] = []
    deadline = time.monotonic() + 300
    while not pids and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
        pids = _ray_workers(proc.pid)
    assert pids, "no Ray trial process was seen running: " + proc.stderr.read()[-3000:]
    os.kill(pids[0], signal.SIGKILL)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 0, err[-3000:]
    assert "the Ray worker running it died" in err
    s = study()
    _assert_exact(s, 2)
    died = [t for t in s.get_trials() if t.state == TrialState.FAIL]
    assert len(died) == 1 and "counted" not in died[0].user_attrs
    assert any(t.user_attrs.get("retry_of") == died[0].number for t in s.get_trials())
    assert s.user_attrs["quiet_latency"]  # the re-measurement ran as a Ray task
    before = {t.number for t in s.get_trials()}

    # 2. kill -9 the driver with a trial running: the rerun without Ray fails it as stale
    proc = subprocess.Popen([*ray_cmd, "--trials", "3"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
                            start_new_session=True)
    seen = _wait_for(study, lambda ts: any(t.state == TrialState.RUNNING
                                           and t.number not in before for t in ts), proc,
                     seconds=300)
    assert seen is not None, "no Ray trial was seen running: " + proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    running = [t.number for t in study().get_trials() if t.state == TrialState.RUNNING]
    assert running
    r = subprocess.run(_cli(spec, "--trials", "3"), capture_output=True, text=True,
                       timeout=300, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = study()
    _assert_exact(s, 3)
    for n in running:
        assert "no heartbeat since" in fail_reason(s.trials[n])
    assert not [t for t in s.get_trials() if t.state == TrialState.PRUNED]  # no placeholder


# -- the locks that keep latency quiet -------------------------------------------------------

def _order(held, wanted, hold_until_acquired: bool) -> list[str]:
    """What happens first while one thread holds ``held``: its release, or another thread
    acquiring ``wanted``. The holder gives the other thread a moment to try (or, when
    ``hold_until_acquired``, waits for it to get in) before releasing."""
    events: list[str] = []
    holding, trying, acquired = threading.Event(), threading.Event(), threading.Event()

    def hold():
        with held:
            holding.set()
            trying.wait(30)
            if hold_until_acquired:
                acquired.wait(30)
            else:
                time.sleep(0.3)  # a lock that does not block lets the other in meanwhile
            events.append("released")

    def want():
        holding.wait(30)
        trying.set()
        with wanted:
            events.append("acquired")
            acquired.set()

    threads = [threading.Thread(target=hold), threading.Thread(target=want)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return events


def test_one_latency_measurement_at_a_time_and_quiet_waits_for_trials(tmp_path):
    from searchcomp.search.locks import computing, measuring, quiet

    # one measurement at a time; the quiet lock waits for every computing trial
    for held, wanted in ((measuring(tmp_path), measuring(tmp_path)),
                         (computing(tmp_path), quiet(tmp_path))):
        assert _order(held, wanted, hold_until_acquired=False) == ["released", "acquired"]
    # trials of the study compute side by side: the second gets in while the first holds
    assert _order(computing(tmp_path), computing(tmp_path),
                  hold_until_acquired=True) == ["acquired", "released"]
