"""What the commands print: plain lines when stderr is not a terminal (no bars, no escape
codes, no ``nan`` for a loss not read yet), and with ``--json`` one JSON document on stdout and
nothing else there, for every command that has ``--json``."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from searchcomp import console
from searchcomp.cli import build_parser, main
from searchcomp.search.progress import Progress

from .conftest import ROOT

SPACE = """\
name: out
model: {{arch: "tests.tiny_factory:tiny_cnn", num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50}}
base: {{source: train, epochs: 2}}
blocks:
  select: ["0", "1"]
  default: {{conv: [keep, separable], prune: [0.0], bits: [32, 8]}}
  head: [keep]
finetune: {{steps: 12}}
profile: {{steps: 1}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: 3, seed_configs: [{{conv: separable}}]}}
studies_dir: {studies}
"""

#: what a terminal control sequence or a redrawn line leaves in a log
CONTROL = re.compile(r"\x1b|\r")


def _strict(text: str):
    """json.loads that also refuses NaN and Infinity (not JSON; jq refuses them)."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command in a child process whose stdout and stderr are pipes (not terminals)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop(console.ENV, None)
    return subprocess.run([sys.executable, "-m", "searchcomp", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    """A search run with ``--json`` through pipes: (space file, the finished process)."""
    root = tmp_path_factory.mktemp("out")
    spec = root / "out.yaml"
    spec.write_text(SPACE.format(studies=root / "studies"))
    return spec, _cli("run", str(spec), "--json", cwd=root)


# -- plain lines in a pipe -------------------------------------------------------------------

@pytest.mark.slow
def test_a_piped_run_logs_plain_lines_and_its_summary_as_json(piped):
    spec, r = piped
    assert r.returncode == 0, r.stderr
    assert not CONTROL.search(r.stderr), "escape codes or carriage returns in the log"
    lines = r.stderr.splitlines()
    assert all(line.strip() for line in lines), "blank lines in the log"
    assert "nan" not in r.stderr
    # one line per epoch of the base, one per phase, one per trial
    assert [m for m in lines if m.startswith("base: training epoch")] == [
        m for m in lines if re.match(r"base: training epoch [12]/2, mean loss \d", m)]
    assert len([m for m in lines if m.startswith("base: training epoch")]) == 2
    for phase in ("base: training ", "base: validation accuracy", "teacher: logits",
                  "base: val accuracy"):
        assert sum(m.startswith(phase) for m in lines) >= 1, phase
    assert len([m for m in lines if re.match(r"trial +\d+ acc ", m)]) == 3
    summary = _strict(r.stdout)  # stdout: the JSON document alone
    assert summary["ran"] == 3 and summary["done"] == 3 and summary["study"] == "out"


def test_progress_draws_bars_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, bars in ((io.StringIO(), False), (Terminal(), True)):
        p = Progress(total=2, done=0, quiet=False, stream=stream)
        p.start_trial(0, 12)
        for step in range(1, 13):  # the loss is read at step 10 for the first time
            p.step(step, 12, None if step < 10 else 0.5)
        p.finished("trial    0 acc 0.5000", front_size=1)
        p.close()
        text = stream.getvalue()
        assert bool(CONTROL.search(text)) == bars
        assert "trial    0 acc 0.5000" in text and "nan" not in text
        if bars:
            assert "loss=0.500" in text


def test_the_env_variable_overrides_the_terminal_check(monkeypatch):
    monkeypatch.setenv(console.ENV, "bars")
    assert console.is_terminal(io.StringIO())
    monkeypatch.setenv(console.ENV, "lines")
    assert not console.is_terminal(sys.__stderr__)


def test_a_fine_tune_reports_no_loss_before_it_reads_one():
    from searchcomp.config.schema import FinetuneConfig
    from searchcomp.data.splits import Batches
    from searchcomp.train import finetune

    from .tiny_factory import tiny_cnn

    torch.manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (40,))
    batches = Batches(x, y, 8, torch.zeros(1), torch.ones(1), shuffle=True, seed=0)
    seen: list = []
    finetune(tiny_cnn(in_channels=1), None, batches, batches,
             FinetuneConfig(steps=12, loss="ce"), on_step=lambda s, n, loss: seen.append(loss))
    assert len(seen) == 12
    assert seen[:9] == [None] * 9  # not read from the device yet: nothing to show
    assert all(isinstance(v, float) for v in seen[9:])


# -- --json: one document on stdout ----------------------------------------------------------

def _json_commands() -> set[str]:
    """Every command whose parser has --json."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name for name, p in sub.choices.items()
            if any("--json" in a.option_strings for a in p._actions)}


#: every command with --json, and how the tests below call it (after the piped run)
JSON_CALLS = {
    "inspect": [["inspect"]],
    "run": [["run", "--trials", "3"]],  # the study has them: a resume that runs nothing
    "front": [["front"], ["front", "--remeasure"], ["front", "--max-size-mib", "1"]],
    "profile": [["profile"]],
    "export": [["export", "--trial", "1", "--out", "{tmp}/exported"]],
    "report": [["report", "--out", "{tmp}/report.html"]],
}


def test_every_command_with_json_is_tested():
    assert _json_commands() == set(JSON_CALLS)


@pytest.mark.slow
@pytest.mark.parametrize("call", [c for calls in JSON_CALLS.values() for c in calls],
                         ids=lambda c: " ".join(c[:2]))
def test_json_output_is_one_document_on_stdout(piped, call, capfd, tmp_path):
    spec, r = piped
    assert r.returncode == 0, r.stderr
    capfd.readouterr()
    args = [a.format(tmp=tmp_path) for a in call]
    assert main([args[0], str(spec), *args[1:], "--json"]) == 0
    out, err = capfd.readouterr()  # descriptors: C extensions' and children's output too
    doc = _strict(out)
    assert isinstance(doc, dict) and doc
    assert not CONTROL.search(err)
    if args[0] == "front" and "--remeasure" in args:
        assert "measured again, quietly" in err  # its log went to stderr
    if args[0] == "export":
        assert doc["exported"]["file_mib"] > 0 and Path(tmp_path / "exported").is_dir()


@pytest.mark.slow
def test_front_confirm_json_is_only_json_in_a_pipe(piped):
    spec, r = piped
    assert r.returncode == 0, r.stderr
    c = _cli("front", str(spec), "--confirm", "1", "--json", cwd=spec.parent)
    assert c.returncode == 0, c.stderr
    doc = _strict(c.stdout)
    assert doc["front"] and all(p.get("accuracy_runs") == 2 for p in doc["front"])
    assert "confirm: " in c.stderr and "confirm 1/" in c.stderr  # the log, on stderr
    assert not CONTROL.search(c.stderr) and "nan" not in c.stderr
