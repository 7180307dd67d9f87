"""The space file: every shipped file loads, every bad input gives one clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from searchcomp.cli import main
from searchcomp.config import load_space
from searchcomp.errors import SearchcompError, SpaceError
from searchcomp.models import build_model, find_blocks, find_head

from .conftest import ROOT, TINY_SPACE


def test_every_shipped_space_loads():
    files = sorted((ROOT / "spaces").glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        space = load_space(f)
        assert space.name
        first = f.read_text().splitlines()[0]
        assert first.startswith("#"), f"{f} must start with a comment giving its command"
        assert "searchcomp" in "".join(f.read_text().splitlines()[:4])
        # quick overrides are valid too
        load_space(f, quick=True)


def test_shipped_quick_overrides_apply():
    space = load_space(ROOT / "spaces" / "resnet18-fashion.yaml", quick=True)
    assert space.name == "resnet18-fashion-quick"  # its own study
    assert space.data.train_size == 2000
    assert space.finetune.steps is not None


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("patch, field, line, words", [
    (("  batch_size: 50", "  batch_size: 50\n  trian_size: 3"), "data.trian_size", "trian_size",
     "did you mean 'train_size'"),
    (("  batch_size: 50", "  batch_size: many"), "data.batch_size", "batch_size", "valid integer"),
    (("    bits: [32, 8]", "    bits: [32, 8, 8]"), "blocks.default", "default:",
     "bits: values repeat"),
    (("  head: [keep, meta:2]", "  head: [keep, 'keep:2']"), "blocks.head", "head:",
     "'keep' takes no argument"),
    (("  dataset: digits", "  dataset: imagenet"), "data.dataset", "dataset:", "unknown dataset"),
    (("  in_channels: 1", "  in_channels: 3"), "model.in_channels", "in_channels:", "1 channel"),
])
def test_bad_fields_name_file_field_and_line(tmp_path, patch, field, line, words):
    text = TINY_SPACE.replace(*patch)
    p = _write(tmp_path, text)
    with pytest.raises(SpaceError) as e:
        load_space(p)
    assert e.value.field == field
    expected = None if line is None else 1 + next(
        i for i, t in enumerate(text.splitlines()) if t.strip().startswith(line))
    assert e.value.line == expected
    assert words in str(e.value)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("patch, field, line, words", [
    (("    prune: [0.0, 0.5]", "    prune: [0.0, 1.2]"), "blocks.default.prune", "prune:",
     "must be in [0, 1)"),
    (("    bits: [32, 8]", "    bits: [32, 3]"), "blocks.default.bits", "bits:", "not supported"),
    (("    conv: [keep, separable, meta:4]", "    conv: [keep, 'meta:x']"),
     "blocks.default.conv", "conv:", "must be 'name' or 'name:N'"),
    (("    bits: [32, 8]", "    bitz: [32, 8]"), "blocks.default.bitz", "bitz:",
     "unknown choice axis 'bitz'; did you mean 'bits'"),
    (("    conv: [keep, separable, meta:4]", "    conv: [keep, sepparable]"),
     "blocks.default.conv", "conv:", "unknown conv choice 'sepparable'"),
    (("    conv: [keep, separable, meta:4]", "    conv: [keep, meta]"),
     "blocks.default.conv", "conv:", "'meta' needs an argument"),
    (("  head: [keep, meta:2]", "  head: [keep, separable]"), "blocks.head", "head:",
     "unknown head choice 'separable'; head choices: keep, meta"),
    (("  arch: resnet18", "  arch: resnet19"), "model.arch", "arch:",
     "unknown torchvision architecture"),
])
def test_checks_against_the_registry_and_torchvision_name_the_line(tmp_path, patch, field, line,
                                                                   words):
    """Reading a space file needs no torch, so names of choices and architectures are checked
    when the model is built; the error still names the file, the field and the line."""
    text = TINY_SPACE.replace(*patch)
    p = _write(tmp_path, text)
    space = load_space(p)
    with pytest.raises(SearchcompError) as e:
        model = build_model(space.model)
        find_blocks(model, space)
        find_head(model, space)
    err = space.located(e.value)
    assert err.field == field
    assert err.line == 1 + next(i for i, t in enumerate(text.splitlines())
                                if t.strip().startswith(line))
    assert words in str(err) and str(p) in str(err)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpaceError, match="file not found"):
        load_space(tmp_path / "nope.yaml")
    p = _write(tmp_path, "name: x\ndata: [unclosed\n")
    with pytest.raises(SpaceError, match="not valid YAML") as e:
        load_space(p)
    assert e.value.line is not None


def test_missing_required_field(tmp_path):
    p = _write(tmp_path, "name: x\n")
    with pytest.raises(SpaceError, match="required field is missing") as e:
        load_space(p)
    assert e.value.field == "data"


def test_overrides_are_validated_like_the_file(tmp_path):
    p = _write(tmp_path, TINY_SPACE)
    s = load_space(p, ["data.train_size=200", "blocks.default.bits=[32, 4]"])
    assert s.data.train_size == 200
    assert s.blocks.default.get("bits") == (32, 4)
    with pytest.raises(SpaceError) as e:
        load_space(p, ["data.train_size=-1"])
    assert e.value.file == "--set" and e.value.field == "data.train_size"
    with pytest.raises(SpaceError, match="key=value"):
        load_space(p, ["data.train_size"])
    with pytest.raises(SpaceError, match="unknown key 'nope'"):
        load_space(p, ["data.nope=1"])


def test_scalar_choice_becomes_a_list(tmp_path):
    p = _write(tmp_path, TINY_SPACE.replace("    bits: [32, 8]", "    bits: 8"))
    assert load_space(p).blocks.default.get("bits") == (8,)


def test_line_of_nested_fields(tmp_path):
    s = load_space(_write(tmp_path, TINY_SPACE))
    lines = TINY_SPACE.splitlines()
    conv = 1 + next(i for i, t in enumerate(lines) if t.strip().startswith("conv:"))
    measure = 1 + lines.index("measure:")
    assert s.line_of("blocks.default.conv") == conv
    assert s.line_of("blocks.default.conv.2") == conv
    assert s.line_of("measure.nothing") == measure


@pytest.mark.parametrize("patch, words", [
    (("  default:", "  select: 'foo.*'\n  default:"), "glob 'foo.*' matches no module"),
    (("  default:", "  per_block:\n    'layer1.*': {conv: [keep, meta:3]}\n  default:"),
     "meta:3 cannot apply to layer1.0.conv1"),
    (("  default:", "  per_block:\n    'layer2.*': {conv: [keep, conv3d:5]}\n  default:"),
     "conv3d:5 cannot apply"),
    (("  head: [keep, meta:2]", "  head: [keep, meta:3]"), "meta:3 cannot apply to fc"),
    (("  default:", "  per_block:\n    'layer9.*': {bits: [8]}\n  default:"),
     "glob 'layer9.*' matches no block"),
])
def test_cli_model_checks_exit_2_with_one_line(tmp_path, capsys, patch, words):
    p = _write(tmp_path, TINY_SPACE.replace(*patch))
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert words in err
    assert err.startswith(f"error: {p}:")
    assert len(err.strip().splitlines()) == 1


def test_cli_model_check_in_a_real_process_has_no_traceback(tmp_path):
    p = _write(tmp_path, TINY_SPACE.replace(
        "  default:", "  per_block:\n    'layer1.*': {conv: [keep, meta:3]}\n  default:"))
    r = subprocess.run([sys.executable, "-m", "searchcomp", "inspect", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {p}:") and "meta:3 cannot apply" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_missing_file_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "searchcomp", "inspect", str(tmp_path / "x.yaml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "file not found" in r.stderr and "Traceback" not in r.stderr
