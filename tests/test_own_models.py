"""End to end with the user's own kind of network and data: a tiny torchvision MobileNetV2 and
a VGG-style factory model on a streamed image folder each run a two-trial search with
prune + bits + a conv choice, and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from searchcomp.config import IMAGENET_MEAN, IMAGENET_STD, load_space
from searchcomp.deploy.load import load
from searchcomp.results.export import export_trial
from searchcomp.results.study import load_results
from searchcomp.search.api import run_search

from .conftest import ROOT

pytestmark = pytest.mark.slow

MOBILENET = """\
name: tiny-mobilenet
model: {{arch: mobilenet_v2, num_classes: 10, in_channels: 1, image_size: 16,
        kwargs: {{width_mult: 0.25}}}}
data: {{dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50,
       normalize: imagenet}}
base: {{source: train, epochs: 1, augment: [crop]}}
blocks:
  default: {{conv: [keep], prune: [0.0, 0.5], bits: [32, 8]}}
  per_block: {{"features.[23]": {{conv: [keep, meta:4]}}}}   # local fits cost time: two blocks
finetune: {{steps: 2}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: 2, anchors: false, seed_configs: [{{conv: meta:4, prune: 0.5, bits: 8}}]}}
studies_dir: {studies}
"""

VGG = """\
name: tiny-vgg
model: {{arch: "examples.vgg.model:vgg_style", num_classes: 10, in_channels: 1, image_size: 16,
        kwargs: {{width: 8, hidden: 32}}}}
data: {{dataset: folder, root: {root}, train_size: 120, val_size: 40, test_size: 40,
       batch_size: 20, in_memory: false, workers: 1}}
base: {{source: train, epochs: 1}}
blocks:
  default: {{conv: [keep, meta:4], prune: [0.0, 0.5], bits: [32, 8]}}
  head_module: classifier.0
  head: [keep, meta:2]
finetune: {{steps: 2}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: 2, anchors: false, seed_configs: [{{conv: meta:4, prune: 0.5, bits: 8, head: meta:2}}]}}
studies_dir: {studies}
"""


def _search_and_export(tmp_path, text: str, fmt: str):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    space = load_space(p)
    run_search(space, quiet=True, log=lambda m: None)
    res = load_results(space)
    rows = {r["trial"]: r for r in res.rows}
    assert set(rows) == {0, 1}
    recipe = rows[1]["recipe"]["blocks"]
    assert any(c.get("prune") and c.get("bits") == 8 and c.get("conv") for c in recipe.values())
    out = tmp_path / "export"
    card = export_trial(space, 1, out, fmt=fmt, log=lambda m: None)
    return space, rows, card, out


def test_tiny_mobilenetv2_search_and_export_carries_imagenet_normalisation(tmp_path):
    space, rows, card, out = _search_and_export(
        tmp_path, MOBILENET.format(studies=tmp_path / "studies"), "state_dict")
    assert rows[1]["size_mib"] < rows[0]["size_mib"] and rows[1]["params"] < rows[0]["params"]
    gray = {"mean": [float(np.mean(IMAGENET_MEAN))], "std": [float(np.mean(IMAGENET_STD))],
            "kind": "imagenet"}
    info = yaml.safe_load((out / "recipe.yaml").read_text())
    assert info["normalize"]["kind"] == "imagenet"
    assert info["normalize"]["mean"] == pytest.approx(gray["mean"])
    assert info["normalize"]["std"] == pytest.approx(gray["std"])
    assert card["input"]["normalize"]["kind"] == "imagenet"
    assert "imagenet statistics" in (out / "card.md").read_text()
    base_meta = json.loads(next((tmp_path / "studies" / "_base").glob("*.json")).read_text())
    assert base_meta["normalize"]["kind"] == "imagenet"  # stored with the base
    model = load(out)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert 0 <= card["exported"]["test_accuracy"] <= 1


def _digit_folder(root):
    """The digits as a folder of PNGs of mixed sizes, the user's own images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images[:400], d.target[:400], strict=True)):
        split = "test" if i % 5 == 0 else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        a = np.kron((img * 255 / 16).astype(np.uint8), np.ones((2, 2), np.uint8))
        pic = Image.fromarray(a)
        if i % 2:
            pic = pic.resize((24 + i % 9, 16))  # another size and aspect ratio
        pic.save(folder / f"{i}.png")


def test_vgg_style_factory_on_a_streamed_folder_search_and_onnx_export(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the factory is examples.vgg.model
    _digit_folder(tmp_path / "images")
    space, rows, card, out = _search_and_export(
        tmp_path, VGG.format(root=tmp_path / "images", studies=tmp_path / "studies"), "onnx")
    assert rows[1]["recipe"]["head"] == "meta:2"
    assert rows[1]["params"] < rows[0]["params"]
    info = yaml.safe_load((out / "recipe.yaml").read_text())
    # pruning features.8 shrank the wide FC's inputs (16 -> 8 channels x 16 positions)
    assert info["resized"]["classifier.0"]["in"] == 8 * 16
    assert info["head_name"] == "classifier.0"
    assert card["format"] == "onnx" and card["exported"]["max_abs_diff"] < 1e-3
    model = load(out)
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 10)
