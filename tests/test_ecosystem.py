"""The user's own model and data in the space file: safe stem defaults, normalisation, dataset
factories, and every shipped space inspecting offline."""

from __future__ import annotations

import json

import pytest

from searchcomp.cli import main
from searchcomp.config import load_space
from searchcomp.errors import SpaceError

from .conftest import ROOT, TINY_SPACE


def _write(tmp_path, text):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("size, source, small, norm", [
    (32, "train", True, "dataset"),        # a CIFAR-size net trained here: CIFAR stem
    (224, "train", False, "dataset"),      # ImageNet-size: the standard stem
    (32, "pretrained", False, "imagenet"),  # pretrained weights keep their stem and statistics
    (32, "checkpoint", False, "dataset"),   # a checkpoint keeps its stem (set true if CIFAR's)
])
def test_auto_stem_and_normalisation(tmp_path, size, source, small, norm):
    text = TINY_SPACE.replace("image_size: 8", f"image_size: {size}").replace(
        "source: train", f"source: {source}\n  path: ck.pt")
    s = load_space(_write(tmp_path, text))
    assert s.model.small_input is small and s.data.normalize == norm


def test_small_input_true_on_a_pretrained_stem_is_an_error_naming_the_line(tmp_path, capsys):
    text = TINY_SPACE.replace("  image_size: 8", "  image_size: 32\n  small_input: true").replace(
        "source: train", "source: pretrained")
    p = _write(tmp_path, text)
    with pytest.raises(SpaceError, match="true would replace the pretrained stem") as e:
        load_space(p)
    line = 1 + text.splitlines().index("  small_input: true")
    assert (e.value.field, e.value.line) == ("model.small_input", line)
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {p}:{line}: model.small_input:") and len(err.splitlines()) == 1
    # explicit false is fine, and so is true on a checkpoint (a CIFAR-stem checkpoint)
    load_space(_write(tmp_path, text.replace("small_input: true", "small_input: false")))
    load_space(_write(tmp_path, text.replace("source: pretrained", "source: checkpoint\n"
                                             "  path: ck.pt")))


@pytest.mark.parametrize("patch, field, words", [
    (("  dataset: digits", "  dataset: svhn"), "data.dataset", "unknown dataset 'svhn'"),
    (("  dataset: digits", "  dataset: 'my data:fn'"), "data.dataset", "package.module:function"),
    (("  dataset: digits", "  dataset: digits\n  normalize: {mean: [0.5, 0.5], std: [1, 1]}"),
     "data.normalize", "gives 2 mean/std values for 1-channel images"),
    (("  dataset: digits", "  dataset: digits\n  normalize: {mean: [0.5], std: [0]}"),
     "data.normalize", "std values must be > 0"),
    (("  dataset: digits", "  dataset: digits\n  normalize: median"), "data.normalize",
     "unknown normalisation 'median'"),
    (("  dataset: digits", "  dataset: digits\n  normalize: {mean: [0.5]}"), "data.normalize",
     "std: Field required"),
    (("  dataset: digits", "  dataset: digits\n  kwargs: {n: 3}"), "data", "factory"),
    (("  epochs: 1", "  epochs: 1\n  augment: [crop, rotate]"), "base.augment.1",
     "'crop' or 'flip'"),
    (("  dataset: digits", "  dataset: digits\n  workers: -1"), "data.workers", ">= 0"),
])
def test_bad_data_fields_name_their_line(tmp_path, patch, field, words):
    p = _write(tmp_path, TINY_SPACE.replace(*patch))
    with pytest.raises(SpaceError, match=words) as e:
        load_space(p)
    assert e.value.field.startswith(field) and e.value.line is not None


def _mobilenet(out: dict) -> None:
    assert len(out["blocks"]) == 17
    assert {b["family"] for b in out["blocks"]} == {"inverted residual"}
    assert all("conv.1.0" not in " ".join(b["convs"]) for b in out["blocks"])  # no depthwise


def _vgg(out: dict) -> None:
    assert {b["family"] for b in out["blocks"]} == {"plain"}
    assert out["head"]["name"] == "classifier.0"  # the wide FC layer, not the last Linear
    assert out["head"]["candidates"] == ["classifier.0 Linear 1024->256 (head)",
                                         "classifier.3 Linear 256->10"]
    assert "meta:4" in out["blocks"][0]["left_out"]  # cannot split the 1 gray input channel


EXTRA = {"mobilenetv2-fashion.yaml": _mobilenet, "vgg-fashion.yaml": _vgg}


@pytest.mark.parametrize("space", sorted(p.name for p in (ROOT / "spaces").glob("*.yaml")))
def test_every_shipped_space_inspects_offline(space, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # factories (examples.vgg...) import from the repository root
    assert main(["inspect", f"spaces/{space}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["blocks"] and out["base"]["params"] > 0
    assert out["head"]["name"] in " ".join(out["head"]["candidates"])
    first = (ROOT / "spaces" / space).read_text().splitlines()[:3]
    assert any(f"spaces/{space}" in line for line in first), "first comment gives the command"
    EXTRA.get(space, lambda out: None)(out)
