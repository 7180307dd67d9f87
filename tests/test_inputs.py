"""Every bad input is refused before any work: one line naming the file, the field and the
line, exit code 2, nothing trained, downloaded or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from searchcomp.cli import main
from searchcomp.config import load_space
from searchcomp.errors import SearchcompError

from .conftest import TINY_SPACE


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text + f"studies_dir: {tmp_path / 'studies'}\n")
    return p


def _line(text: str, needle: str) -> int:
    return next(i for i, s in enumerate(text.splitlines(), 1) if needle in s)


def test_a_key_given_twice_names_both_lines(tmp_path, capsys):
    text = TINY_SPACE.replace("  train_size: 300\n", "  train_size: 300\n  train_size: 30\n")
    p = _write(tmp_path, text)
    first = _line(text, "train_size: 300")
    with pytest.raises(SearchcompError) as e:
        load_space(p)
    assert f"{p}:{first + 1}:" in str(e.value)
    assert f"'train_size' is given twice in one mapping (lines {first} and {first + 1})" \
        in str(e.value)
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {p}:{first + 1}:") and len(err.strip().splitlines()) == 1


def test_a_key_given_twice_in_a_set_value_is_refused(tiny_space_file):
    with pytest.raises(SearchcompError, match="given twice"):
        load_space(tiny_space_file, ["blocks.per_block={'layer1.*': {bits: [8]}, "
                                     "'layer1.*': {bits: [4]}}"])


@pytest.mark.parametrize("entry, words", [
    ("  data.trian_size: 50", "unknown key 'trian_size'; did you mean 'train_size'?"),
    ("  data.train_size: lots", "valid integer"),
    ("  finetune.stepz: 3", "unknown key 'stepz'"),
    ("  model.in_channels: 3", "is 3 but digits images have 1 channel(s)"),
])
def test_the_quick_section_is_checked_without_quick(tmp_path, capsys, entry, words):
    text = TINY_SPACE + "quick:\n  model.image_size: 16\n" + entry + "\n"
    p = _write(tmp_path, text)
    with pytest.raises(SearchcompError) as e:
        load_space(p)  # no --quick
    assert words in str(e.value) and "quick:" in str(e.value)
    assert str(e.value).startswith(f"{p}:{_line(text, entry.strip())}:")
    assert main(["inspect", str(p)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_good_quick_section_still_loads_both_ways(tmp_path):
    p = _write(tmp_path, TINY_SPACE + "quick:\n  model.image_size: 16\n")
    assert load_space(p).model.image_size == 8
    assert load_space(p, quick=True).model.image_size == 16


@pytest.mark.parametrize("patch, field, words", [
    (("  dataset: digits", "  dataset: folder\n  root: {tmp}/no-such-folder"), "data.root",
     "no-such-folder does not exist"),
    (("  source: train", "  source: checkpoint\n  path: {tmp}/missing.pt"), "base.path",
     "missing.pt does not exist"),
])
def test_inspect_refuses_a_missing_folder_or_checkpoint(tmp_path, capsys, patch, field, words):
    text = TINY_SPACE.replace(patch[0], patch[1].format(tmp=tmp_path))
    p = _write(tmp_path, text)
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    line = _line(text, field.split(".")[1] + ":")
    assert err.startswith(f"error: {p}:{line}: {field}:") and words in err, err
    assert main(["run", str(p), "--quiet"]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "studies").exists()


def test_an_empty_image_folder_is_refused_before_reading(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    text = TINY_SPACE.replace("  dataset: digits", f"  dataset: folder\n  root: {tmp_path}/images")
    assert main(["inspect", str(_write(tmp_path, text))]) == 2
    assert "has no class subfolders" in capsys.readouterr().err


def test_a_checkpoint_that_does_not_fit_is_refused_by_inspect(tmp_path, capsys):
    import torch

    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    text = TINY_SPACE.replace("  source: train", f"  source: checkpoint\n  path: {tmp_path}/other.pt")
    assert main(["inspect", str(_write(tmp_path, text))]) == 2
    assert "does not fit model.arch" in capsys.readouterr().err


def test_a_choice_that_cannot_apply_is_refused_before_the_base_trains(tmp_path, capsys):
    # meta:3 cannot split 64 channels: found on fresh weights, before data, base or study
    # (asked for on the blocks by name; a default that cannot apply is only left out)
    text = TINY_SPACE.replace("  head:", "  per_block:\n    'layer1.*': {conv: [keep, meta:3]}\n"
                              "  head:")
    p = _write(tmp_path, text)
    assert main(["run", str(p), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {p}:{_line(text, 'meta:3')}: blocks.per_block.layer1.*.conv:")
    assert "meta:3 cannot apply" in err and "base:" not in err
    assert not (tmp_path / "studies").exists(), "nothing may be trained or written"


def test_a_trials_folder_that_cannot_be_written_is_refused_before_work(tmp_path, capsys):
    p = _write(tmp_path, TINY_SPACE)
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "tiny").write_text("a file where the study folder goes")
    assert main(["run", str(p), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot write trial weights" in err and "base:" not in err
    assert not (tmp_path / "studies" / "_base").exists()
