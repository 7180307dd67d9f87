"""Every torchvision classification CNN through the checks, and a small set of families
through every command.

Each architecture either inspects (its blocks found, the defaults that cannot apply left out
with a reason) or is refused in one line naming the problem — never a traceback. The default
suite checks one member of every architecture family at its smallest size (and a tiny
DenseNet and RegNet built from torchvision's own classes); ``SEARCHCOMP_ZOO=all`` checks every
model ``torchvision.models.list_models`` lists (minutes: the largest have 600 M parameters).
Then a plain CNN, a DenseNet, an inverted-residual net and a RegNet each run two tiny trials,
the front, a budget question, the report, the profile, an export and ``load``.
"""

from __future__ import annotations

import os

import pytest
import torch

from searchcomp.config import load_space
from searchcomp.errors import SearchcompError
from searchcomp.models import check_inputs

#: transformers are not CNNs: their blocks have no conv to search
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
#: one of each architecture family, smallest first (kwargs keep them small where they can)
FAMILIES = {
    "squeezenet1_1": "", "googlenet": "", "tests.tiny_factory:tiny_densenet": "",
    "mobilenet_v2": "{width_mult: 0.25}", "mobilenet_v3_small": "{width_mult: 0.25}",
    "mnasnet0_5": "", "efficientnet_b0": "", "shufflenet_v2_x0_5": "",
    "tests.tiny_factory:tiny_regnet": "", "resnet18": "",
}
#: the other families' smallest members: tens of millions of parameters, so slow
LARGER = ["alexnet", "vgg11_bn", "inception_v3", "efficientnet_v2_s", "regnet_y_400mf",
          "resnext50_32x4d", "convnext_tiny"]

SPACE = """\
name: zoo
model: {{arch: "{arch}", num_classes: 10, in_channels: 1, image_size: {size}{kwargs}}}
data: {{dataset: digits, train_size: {train}, val_size: 40, test_size: 40, batch_size: 40}}
base: {{source: train, epochs: 1}}
blocks:
  default: {{conv: [keep, separable, meta:2], prune: [0.0, 0.25], bits: [32, 8],
            width: [0.0, 0.25]}}
  head: [keep, meta:2]
finetune: {{steps: 1}}
profile: {{steps: 0}}
measure: {{runs: 30, warmup: 1}}
search: {{trials: 2, seed_configs: []}}
studies_dir: {studies}
"""


def _space(tmp_path, arch, kwargs="", size=32, train=80):
    p = tmp_path / "zoo.yaml"
    p.write_text(SPACE.format(arch=arch, size=size, train=train, studies=tmp_path / "studies",
                              kwargs=f", kwargs: {kwargs}" if kwargs else ""))
    return p


def _check(tmp_path, arch, kwargs=""):
    """Accepted (returns the architecture) or refused in one line; anything else fails."""
    try:
        return check_inputs(load_space(_space(tmp_path, arch, kwargs)))
    except SearchcompError as e:
        assert "\n" not in str(e), str(e)
        return e


def _all_cnns() -> list[str]:
    from torchvision import models

    return [a for a in models.list_models(module=models) if not a.startswith(TRANSFORMERS)]


@pytest.mark.parametrize("arch", [*FAMILIES, *(pytest.param(a, marks=pytest.mark.slow)
                                               for a in LARGER)])
def test_every_architecture_family_inspects_or_is_refused_in_one_line(tmp_path, arch):
    got = _check(tmp_path, arch, FAMILIES.get(arch, ""))
    if arch == "inception_v3":  # needs 75 px: a clear refusal at 32
        assert isinstance(got, SearchcompError) and "cannot run on 1x32x32" in str(got)
        return
    assert not isinstance(got, SearchcompError), got
    blocks = got.blocks
    assert blocks and all(b.size >= 1 for b in blocks)
    # a default that cannot apply is left out on that block, with the reason
    for b in blocks:
        for value, why in b.dropped.items():
            assert why and "\n" not in why, (b.name, value)
    assert sum(b.size > 1 for b in blocks) > 0, "nothing left to search"


@pytest.mark.skipif(os.environ.get("SEARCHCOMP_ZOO") != "all",
                    reason="every torchvision model: set SEARCHCOMP_ZOO=all (minutes)")
@pytest.mark.slow
@pytest.mark.parametrize("arch", _all_cnns())
def test_every_torchvision_classification_cnn_inspects_or_is_refused(tmp_path, arch):
    got = _check(tmp_path, arch)
    assert isinstance(got, SearchcompError) or got.blocks


def test_inspect_lists_what_is_left_out_in_text_and_json(tmp_path):
    from searchcomp.overview import inspect_space

    space = load_space(_space(tmp_path, "mobilenet_v2", "{width_mult: 0.25}", size=16))
    ov = inspect_space(space)
    text, js = ov.to_text(), ov.to_json()
    # separable fits none of MobileNetV2's convs (1x1 or depthwise): left out everywhere
    assert "left out: separable on every block: separable cannot apply" in text
    assert "stage of features.2 (width): 8 channels shared by features.2, features.3" in text
    assert any(line.split()[-4:] == ["conv", "prune", "bits", "width"]
               for line in text.splitlines())
    b = {x["name"]: x for x in js["blocks"]}
    assert "separable" in b["features.3"]["left_out"]
    assert "chosen on its first block, features.2" in b["features.3"]["left_out"]["width 0.25"]
    assert b["features.2"]["stage"]["width"]["blocks"] == ["features.2", "features.3"]


ENDS = {
    "plain": ("examples.vgg.model:vgg_style", "{width: 8, hidden: 32}", 16),
    "dense": ("tests.tiny_factory:tiny_densenet", "", 16),
    "inverted residual": ("tests.tiny_factory:tiny_mobilenet", "", 16),
    "regnet": ("tests.tiny_factory:tiny_regnet", "", 16),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", ENDS)
def test_a_family_runs_every_command(tmp_path, family):
    from searchcomp.deploy.load import load
    from searchcomp.predict.budget import Budget
    from searchcomp.results.budget import answer_budget
    from searchcomp.results.export import export_trial
    from searchcomp.results.report import write_report
    from searchcomp.results.study import load_results
    from searchcomp.search.api import run_search
    from searchcomp.search.profile import profile_space

    arch, kwargs, size = ENDS[family]
    space = load_space(_space(tmp_path, arch, kwargs, size=size))
    quiet = dict(log=lambda m: None)
    run_search(space, quiet=True, **quiet)
    res = load_results(space)
    assert len([r for r in res.rows if r["state"] == "complete"]) == 2 and res.front
    prof = profile_space(space, progress=False, **quiet)
    rows = prof.rows()
    assert rows and all(r["params_change"] is not None for r in rows)
    assert any(r["latency_ms_change"] is not None for r in rows[1:])
    # the surrogate sampler on top of the profile: one more trial
    run_search(space, trials=3, sampler="surrogate", quiet=True, **quiet)
    ans = answer_budget(space, Budget({"size_mib": res.base["size_mib"]}))
    assert ans.measured is not None and ans.candidate is not None, ans.notes
    assert write_report(space).is_file()
    best = res.front[0]["trial"]
    card = export_trial(space, best, tmp_path / "export", **quiet)
    assert card["exported"]["params"] == res.row(best)["params"]
    model = load(tmp_path / "export")
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)
