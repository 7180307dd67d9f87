"""The sensitivity table: its rows are the single-change candidates (parameter changes equal
the closed forms), it is stored with the study and reused, and only new rows run when the
space grows."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import pytest
import torch

from searchcomp import choices
from searchcomp.choices.prune import n_remove
from searchcomp.cli import main
from searchcomp.config import load_space
from searchcomp.models import build_model, find_blocks
from searchcomp.search import profile as profile_mod
from searchcomp.search.profile import fill_profile, read_profile
from searchcomp.search.trial import prepare

RAY = importlib.util.find_spec("ray") is not None
SPACE = """\
name: prof
model: {{arch: resnet18, num_classes: 10, in_channels: 1, image_size: 8, small_input: true}}
data: {{dataset: digits, train_size: 100, val_size: 50, test_size: 50, batch_size: 50}}
base: {{source: checkpoint, path: {ckpt}}}
blocks:
  select: ["layer1.*"]
  default: {{conv: [keep, separable], prune: [0.0, 0.5], bits: [32, 8]}}
  head: [keep, meta:2]
finetune: {{steps: 2, calib_batches: 1}}
profile: {{steps: {steps}}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: 3, seed_configs: []}}
studies_dir: {studies}
"""


def _space_file(tmp_path, steps=0):
    ckpt = tmp_path / "base.pt"
    if not ckpt.exists():  # a fixed, untrained base: no training in the fast tests
        torch.manual_seed(0)
        from searchcomp.config import ModelConfig

        model = build_model(ModelConfig(arch="resnet18", num_classes=10, in_channels=1,
                                        image_size=8))
        torch.save(model.state_dict(), ckpt)
    p = tmp_path / "prof.yaml"
    p.write_text(SPACE.format(ckpt=ckpt, steps=steps, studies=tmp_path / "studies"))
    return p


def _quiet(_m):
    pass


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The prepared context of the space (a fixed untrained base: nothing is trained)."""
    space = load_space(_space_file(tmp_path_factory.mktemp("prof")))
    return prepare(space, progress=False, log=_quiet)


def _grown(ctx, *overrides):
    """``ctx`` for the same space with ``--set`` overrides (the base and data are reused)."""
    space = load_space(ctx.space.file, list(overrides))
    return replace(ctx, space=space, blocks=find_blocks(ctx.base, space))


def test_rows_are_the_single_changes_with_closed_form_params(prepared):
    ctx = prepared
    tables, computed = fill_profile(ctx, "rows", log=_quiet, progress=False)
    rows = read_profile(ctx.space, "rows").rows()
    assert computed == len(rows) == 1 + 2 * 3 + 1
    got = {(r["block"], r["choice"], r["value"]): r for r in rows}
    assert set(got) == {("base", "base", "keep"), ("fc", "head", "meta:2")} | {
        (b, c, v) for b in ("layer1.0", "layer1.1")
        for c, v in (("conv", "separable"), ("prune", 0.5), ("bits", 8))}
    base = ctx.base
    for b in ("layer1.0", "layer1.1"):
        block = base.get_submodule(b)
        closed = sum(choices.get("separable").expected_params(c, None) - _params(c)
                     for c in (block.conv1, block.conv2))
        assert got[b, "conv", "separable"]["params_change"] == closed
        n = n_remove(0.5, block.conv1.out_channels)  # conv1's filters, bn1, conv2's inputs
        closed = -n * (block.conv1.in_channels * 9 + 2 + block.conv2.out_channels * 9)
        assert got[b, "prune", 0.5]["params_change"] == closed
        assert got[b, "bits", 8]["params_change"] == 0
        assert got[b, "bits", 8]["size_mib_change"] < 0
        assert 0 < got[b, "bits", 8]["output_error"] < got[b, "prune", 0.5]["output_error"]
    fc = base.fc
    assert got["fc", "head", "meta:2"]["params_change"] == \
        choices.get("meta", "head").expected_params(fc, 2) - _params(fc)
    # without recovery the reference is the base itself, and a row is its candidate's score
    from searchcomp.train import evaluate

    assert got["base", "base", "keep"]["accuracy"] == evaluate(base, ctx.splits.val)
    assert all(r["accuracy_change"] is not None and r["latency_ms_change"] is not None
               for r in rows)


def test_table_is_reused_and_only_new_rows_run(prepared, monkeypatch):
    ctx = prepared
    fill_profile(ctx, "reuse", log=_quiet, progress=False)
    ran = []
    real = profile_mod.profile_row
    monkeypatch.setattr(profile_mod, "profile_row",
                        lambda c, *r: ran.append(r) or real(c, *r))
    _, computed = fill_profile(ctx, "reuse", log=_quiet, progress=False)
    assert computed == 0 and ran == []  # reused, not recomputed
    grown = _grown(ctx, "blocks.default.bits=[32, 8, 4]")
    _, computed = fill_profile(grown, "reuse", log=_quiet, progress=False)
    assert computed == 2 and sorted(ran) == [("layer1.0", "bits", 4), ("layer1.1", "bits", 4)]
    # a setting that changes every row (the recovery) makes its own rows
    ran.clear()
    other = _grown(ctx, "profile.steps=1", "blocks.default.conv=[keep]",
                   "blocks.default.prune=[0.0]", "blocks.default.bits=[32]", "blocks.head=[keep]")
    fill_profile(other, "reuse", log=_quiet, progress=False)
    assert ran == [("", "base", "keep")]


@pytest.mark.slow
def test_profile_command_then_surrogate_run_and_report(tmp_path, capsys, monkeypatch):
    spec = _space_file(tmp_path, steps=1)
    assert main(["profile", str(spec), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy change after the recovery" in out and "layer1.1" in out
    assert "latency change (ms" in out and "head fc" in out
    assert main(["profile", str(spec), "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["computed"] == 0 and len(data["rows"]) == 8
    # on Ray when it is installed: OptunaSearch asks the same sampler (the local loop is
    # what the other tests and the bench use)
    ray = ["--backend", "ray", "--concurrency", "2"] if RAY else []
    monkeypatch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    # no anchors: the base first, then two trials the sampler proposes
    assert main(["run", str(spec), "--sampler", "surrogate", "--quiet", "--trials", "3",
                 "--set", "search.anchors=false", *ray]) == 0
    err = capsys.readouterr().err
    assert "profile:" not in err  # the table was reused
    assert ("up to 2 trials at once" in err) is bool(RAY)
    space = load_space(spec)
    from searchcomp.search.study import open_study

    trials = open_study(space, load_only=True).get_trials()
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    assert "predicted" in trials[-1].user_attrs
    assert main(["front", str(spec)]) == 0
    assert "latency table vs measured, 3 trial(s)" in capsys.readouterr().out
    assert main(["report", str(spec)]) == 0
    html = (tmp_path / "studies" / "prof" / "report.html").read_text()
    assert 'id="heatmap-sensitivity"' in html and 'id="latency-check"' in html
