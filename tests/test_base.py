"""The base model: trained once, cached by everything that determines it, then reused."""

from __future__ import annotations

import pytest
import torch

from searchcomp.config import load_space
from searchcomp.data import load_splits
from searchcomp.errors import SearchcompError
from searchcomp.models.base import cache_path, obtain_base


def test_train_then_reuse_cache(tiny_space_file):
    space = load_space(tiny_space_file, ["data.train_size=200", "base.lr=0.05"])
    splits = load_splits(space.data, space.model)
    logs: list[str] = []
    first = obtain_base(space, splits, progress=False, log=logs.append)
    assert not first.cached and first.path == cache_path(space) and first.path.is_file()
    assert 0.0 <= first.val_accuracy <= 1.0
    assert any("training resnet18" in m for m in logs)
    second = obtain_base(space, splits, progress=False, log=logs.append)
    assert second.cached
    assert second.val_accuracy == first.val_accuracy
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    # anything that changes the trained weights changes the key
    other = load_space(tiny_space_file, ["data.train_size=150"])
    assert cache_path(other) != cache_path(space)
    # fine-tune settings do not
    same = load_space(tiny_space_file, ["data.train_size=200", "base.lr=0.05",
                                        "finetune.lr=0.1"])
    assert cache_path(same) == cache_path(space)


def test_checkpoint_source(tiny_space_file, tmp_path):
    space = load_space(tiny_space_file)
    from searchcomp.models import build_model

    m = build_model(space.model)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    ck = ["base.source=checkpoint", f"base.path={tmp_path}/w.pt"]
    space = load_space(tiny_space_file, ck)
    # a checkpoint keeps the standard stem unless told: this one has the small-input stem
    with pytest.raises(SearchcompError, match="small_input: true if the checkpoint"):
        obtain_base(space, load_splits(space.data, space.model), log=lambda s: None)
    space = load_space(tiny_space_file, [*ck, "model.small_input=true"])
    base = obtain_base(space, load_splits(space.data, space.model), log=lambda s: None)
    assert base.source == "checkpoint"
    assert torch.equal(base.model.fc.weight, m.fc.weight)
