"""Shared fixtures: tiny spaces and models, all offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


#: under pytest-xdist (``-n 2``), each worker process trains on one thread of its own
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


def pytest_collection_modifyitems(items):
    """Tests on the shared finished study are end-to-end: they run a whole search first.

    Groups for ``pytest -n 2 --dist loadgroup`` (what ``python3 -m pytest`` runs): a module's
    tests stay on one worker (its module-scoped fixtures are built once), the finished
    study's users on one worker (the session fixture is built once), and the Ray tests on
    one worker (one local Ray cluster at a time on a 2-core machine)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "finished_study" in names:
            item.add_marker(pytest.mark.slow)
            group = "finished_study"
        elif "ray" in item.name.split("[")[0].split("_"):
            group = "ray"
        else:
            group = item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


TINY_SPACE = """\
name: tiny
model:
  arch: resnet18
  num_classes: 10
  in_channels: 1
  image_size: 8
data:
  dataset: digits
  train_size: 300
  val_size: 100
  test_size: 100
  batch_size: 50
base:
  source: train
  epochs: 1
blocks:
  default:
    conv: [keep, separable, meta:4]
    prune: [0.0, 0.5]
    bits: [32, 8]
  head: [keep, meta:2]
measure:
  runs: 30
  warmup: 2
"""


@pytest.fixture
def tiny_space_file(tmp_path: Path) -> Path:
    """A ResNet-18 on 8x8 scikit-learn digits space, with studies under tmp_path."""
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_SPACE + f"studies_dir: {tmp_path / 'studies'}\n")
    return p


STUDY_SPACE = """\
name: tiny-study
model: {{arch: resnet18, num_classes: 10, in_channels: 1, image_size: 8}}
data: {{dataset: digits, train_size: 200, val_size: 100, test_size: 100, batch_size: 50}}
base: {{source: train, epochs: 1}}
blocks:
  default: {{conv: [keep, separable, conv3d:8, meta:4, pyramid], prune: [0.0, 0.5],
            bits: [32, 8, 4, 2]}}
  head: [keep, meta:2]
finetune: {{steps: 2}}
objectives: [accuracy, size_mib, latency_ms]
measure: {{runs: 30, warmup: 1}}
search: {{trials: 6, seed_configs: [{{conv: separable}}, {{bits: 4}}]}}
studies_dir: {studies}
"""


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory):
    """A finished tiny study (6 search trials, then the greedy baseline in the same study);
    returns its loaded Space. Shared by the export and report tests: do not modify it."""
    from searchcomp.config import load_space
    from searchcomp.search.api import run_search

    root = tmp_path_factory.mktemp("study")
    p = root / "study.yaml"
    p.write_text(STUDY_SPACE.format(studies=root / "studies"))
    space = load_space(p)
    run_search(space, quiet=True, log=lambda m: None)
    run_search(space, strategy="greedy", threshold=0.0, quiet=True, log=lambda m: None)
    return space
