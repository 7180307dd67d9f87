"""The faithful greedy baseline: each kept swap keeps its fine-tuned weights and the next step
starts from that model (source 000); the rebuild form starts every step from the base."""

from __future__ import annotations

import pytest
import torch

from searchcomp.config import load_space
from searchcomp.search import trial as trial_mod
from searchcomp.search.api import run_search
from searchcomp.search.study import open_study

from .test_profile import _space_file

pytestmark = pytest.mark.slow


def _record_finetunes(monkeypatch) -> list[dict[str, torch.Tensor]]:
    """Capture each fine-tune's starting weights (the model right after its build)."""
    starts: list[dict[str, torch.Tensor]] = []
    real = trial_mod.finetune

    def spy(model, *args, **kwargs):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trial_mod, "finetune", spy)
    return starts


@pytest.mark.parametrize("form", ["cumulative", "rebuild"])
def test_a_kept_swap_carries_its_fine_tuned_weights(tmp_path, monkeypatch, form):
    space = load_space(_space_file(tmp_path), ["blocks.default.prune=[0.0]",
                                              "blocks.default.bits=[32]"])
    starts = _record_finetunes(monkeypatch)
    out = run_search(space, strategy="greedy", max_drop=1.0, greedy_form=form, quiet=True,
                     log=lambda m: None)
    g = out.greedy
    assert g["kept"] == ["layer1.0", "layer1.1"] and g["form"] == form
    assert len(starts) == 2  # one fine-tune per step
    study = open_study(space, load_only=True)
    first = study.trials[g["steps"][0]["trial"]]
    saved = torch.load(first.user_attrs["weights"], weights_only=True)
    kept = [k for k in saved if k.startswith("layer1.0.")]
    assert kept and any(k.endswith("depthwise.weight") for k in kept)
    same = all(torch.equal(starts[1][k], saved[k]) for k in kept)
    # step 1 starts from step 0's fine-tuned model, or (rebuild) from a fresh build of the base
    assert same is (form == "cumulative")
    assert all(torch.equal(starts[1][k], starts[0][k]) for k in kept) is (form == "rebuild")
    assert g["threshold"] == pytest.approx(study.user_attrs["base"]["accuracy"] - 1.0)
