"""`searchcomp export`: every format for a candidate mixing every choice, loaded back and
compared with the trial's model; file sizes against size_mib; bad input; missing weights."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from optuna.trial import TrialState

from searchcomp.candidate import Recipe, build
from searchcomp.choices.quant import quantized_tensors
from searchcomp.config import load_space
from searchcomp.deploy.cpu import cpu_features, features_label
from searchcomp.deploy.formats import FORMATS
from searchcomp.deploy.load import load
from searchcomp.errors import SearchcompError
from searchcomp.results.export import export_trial
from searchcomp.search.runner import Searcher, recipe_params
from searchcomp.search.study import open_study
from searchcomp.search.trial import prepare

MIXED = Recipe({
    "layer1.0": {"conv": "separable", "prune": 0.5, "bits": 8},
    "layer1.1": {"conv": "conv3d:8", "bits": 4},
    "layer2.0": {"conv": "meta:4", "prune": 0.5, "bits": 2},
    "layer2.1": {"conv": "pyramid", "bits": 8},
    "layer3.0": {"conv": "separable", "bits": 4},
    "layer3.1": {"conv": "conv3d:8", "prune": 0.5, "bits": 2},
    "layer4.0": {"conv": "meta:4", "prune": 0.5, "bits": 8},
    "layer4.1": {"prune": 0.5, "bits": 4},
}, head="meta:2")

#: |file / size_mib - 1| allowed per format, for a trial searched in the torch runtime (its
#: size_mib is the state_dict file, byte for byte). The weights agree exactly (same integers,
#: same packing); what differs is each format's own structure: TorchScript's code (~40 KiB
#: for ResNet-18, +1.7% on this 2.2 MiB candidate, well under 1% at full size), ONNX's
#: graph (+0.2% here).
SIZE_TOLERANCE = {"state_dict": 0.0, "torchscript": 0.03, "onnx": 0.03}
FLOAT_FORMATS = [f for f in FORMATS if f != "onnx-int8"]


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def mixed(finished_study, tmp_path_factory):
    """A copy of the finished study with one more trial that mixes every choice, plus a failed
    and a pruned trial; the trial's own model for reference."""
    root = tmp_path_factory.mktemp("export")
    src = Path(finished_study.studies_dir)
    shutil.copytree(src, root / "studies", ignore=shutil.ignore_patterns("trials"))
    space = load_space(finished_study.file, [f"studies_dir={root / 'studies'}"])
    ctx = prepare(space, progress=False, log=_quiet)
    study = open_study(space)
    study.enqueue_trial(recipe_params(MIXED, ctx.blocks, space.blocks.head))
    Searcher(ctx, study, seed=space.search.seed, quiet=True).run_one()
    frozen = max(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert frozen.state == TrialState.COMPLETE, frozen.user_attrs.get("fail_reason")
    assert Recipe.from_dict(frozen.user_attrs["recipe"]) == MIXED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats are meant for optimize()
        failed = study.ask()
        failed.set_user_attr("fail_reason", "DivergedError: fine-tune loss is nan")
        study.tell(failed, state=TrialState.FAIL)
        pruned = study.ask()
        pruned.set_user_attr("stopped_reason", "validation accuracy 0.05 < floor 0.5")
        study.tell(pruned, state=TrialState.PRUNED)

    torch.manual_seed(space.search.seed + frozen.number)
    model = build(ctx.base, MIXED, ctx.blocks, ctx.head_name, ctx.calib,
                  prune_criterion=space.finetune.prune_criterion,
                  grad_batches=ctx.grad_batches,
                  prune_round_to=space.blocks.prune_round_to).model
    model.load_state_dict(torch.load(frozen.user_attrs["weights"], weights_only=True))
    x = next(iter(ctx.splits.test))[0][:6]
    with torch.no_grad():
        want = model.eval()(x)
    return SimpleNamespace(space=space, root=root, number=frozen.number, attrs=frozen.user_attrs,
                           failed=failed.number, pruned=pruned.number, model=model, x=x,
                           want=want, base=ctx.base)


def test_deploy_stores_every_width_as_integers_and_computes_the_same(tmp_path):
    """6- and 16-bit weights (not in the study's space) and a Conv3d / Linear too."""
    from torch import nn

    from searchcomp.choices.layers.conv3d import ChannelConv3d
    from searchcomp.choices.quant import quantize_module
    from searchcomp.deploy.integer import integer_model as deploy
    from searchcomp.deploy.onnx import OnnxModule
    from searchcomp.deploy.onnx import export_onnx as save_onnx
    from searchcomp.deploy.onnx import initializer_dtypes as onnx_initializer_dtypes
    from searchcomp.deploy.torchscript import load_torchscript, save_torchscript

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          ChannelConv3d(8, 8, 4, (3, 3), padding=(1, 1)), nn.Conv2d(8, 6, 1),
                          nn.Conv2d(6, 5, 3), nn.Flatten(), nn.Linear(20, 7))
    for i, bits in ((0, 16), (3, 6), (4, 4), (5, 2), (7, 8)):
        quantize_module(model[i], bits)
    model.eval()
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(deploy(model)(x), want, atol=0, rtol=0)  # bit for bit
    save_onnx(deploy(model), x[:1], tmp_path / "m.onnx")
    save_torchscript(deploy(model, cache=True), x[:1], tmp_path / "m.pt")
    with torch.no_grad():
        torch.testing.assert_close(OnnxModule(tmp_path / "m.onnx")(x), want, atol=1e-5,
                                   rtol=1e-5)
        scripted = load_torchscript(tmp_path / "m.pt")
        for _ in range(2):  # the first call dequantizes, the second reuses it
            torch.testing.assert_close(scripted(x), want, atol=1e-6, rtol=1e-6)
    dtypes = onnx_initializer_dtypes(tmp_path / "m.onnx")
    assert dtypes["0.weight_quant.codes"] == "INT16" and dtypes["7.weight_quant.codes"] == "INT8"
    assert dtypes["3.conv.weight_quant.codes"] == dtypes["5.weight_quant.codes"] == "UINT8"
    assert not {"0.weight", "3.conv.weight", "4.weight", "5.weight", "7.weight"} & set(dtypes)


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def exported(mixed):
    """The mixed trial exported once in each format: format -> (folder, card)."""
    out = {}
    for fmt in FORMATS:
        folder = mixed.root / "exports" / fmt
        out[fmt] = folder, export_trial(mixed.space, mixed.number, folder, fmt=fmt, log=_quiet)
    _no_leftovers(mixed.root / "exports")
    return out


@pytest.mark.parametrize("fmt", FLOAT_FORMATS)
def test_export_format_loads_back_smaller_and_equal(mixed, exported, fmt):
    out, card = exported[fmt]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["recipe.yaml", "card.json", "card.md", FORMATS[fmt]])
    assert json.loads((out / "card.json").read_text()) == card
    assert f"trial {mixed.number}" in (out / "card.md").read_text()

    model = load(out)
    assert isinstance(model, torch.nn.Module) and not model.training
    with torch.no_grad():
        got = model(mixed.x)
    torch.testing.assert_close(got, mixed.want, atol=1e-4, rtol=1e-4)

    # the written file is what size_mib promised
    file_mib = (out / FORMATS[fmt]).stat().st_size / 2**20
    assert card["exported"]["file_mib"] == pytest.approx(file_mib)
    assert abs(file_mib / mixed.attrs["size_mib"] - 1) <= SIZE_TOLERANCE[fmt], (
        file_mib, mixed.attrs["size_mib"])
    assert card["same_artifact_as_search"] == (fmt == "state_dict")

    # the card: exported and base side by side, measured in the artifact's runtime
    e, b = card["exported"], card["base"]
    runtime = {"state_dict": "eager", "torchscript": "TorchScript",
               "onnx": "onnxruntime"}[fmt]
    assert runtime in card["runtime"] and e["runtime"] == b["runtime"] == card["runtime"]
    assert card["runtime"].endswith(features_label())
    for side in (e, b):
        assert 0 <= side["test_accuracy"] <= 1 and side["latency_ms"] > 0
        assert side["params"] > 0 and side["file_mib"] > 0
        assert side["cpu_features"] == list(cpu_features() or []) or cpu_features() is None
    # a float file computes what the trial computed: its accuracy is the trial's
    assert card["accuracy_gap"] == pytest.approx(0, abs=0.011)
    assert e["val_accuracy"] == pytest.approx(e["model_val_accuracy"], abs=0.011)
    assert e["params"] < b["params"] and 8 * e["file_mib"] < b["file_mib"]
    assert card["trial"] == mixed.number and card["format"] == fmt
    assert card["search"]["size_mib"] == mixed.attrs["size_mib"]
    assert card["refinetuned"] is False and card["finetune_epochs"] == 0
    assert card["quantized_tensors"] == {"8": 15, "4": 9, "2": 5}  # pyramid: 3 DW + 1 PW
    assert card["test_split"]["images"] == 100


def test_int8_export_of_a_torch_trial_is_post_training_quantized(mixed, exported):
    """A trial searched in the torch runtime exported as onnx-int8: its int8 activation ranges
    are calibrated at export, the card says how far the file is from the trial."""
    from searchcomp.deploy.int8 import int8_kernels

    out, card = exported["onnx-int8"]
    assert card["runtime_name"] == "onnxruntime-int8" and "int8" in card["runtime"]
    assert card["same_artifact_as_search"] is False
    data = (out / FORMATS["onnx-int8"]).read_bytes()
    kernels = int8_kernels(data)
    # every block is at <= 8 bits: 8 residual adds, 4 more in the two pyramid convs
    assert kernels.get("QLinearConv", 0) >= 16 and kernels.get("QLinearAdd", 0) == 12
    e = card["exported"]
    assert card["accuracy_gap"] == pytest.approx(mixed.attrs["accuracy"] - e["val_accuracy"])
    assert card["accuracy_gap_flag"] == (abs(card["accuracy_gap"]) > 0.005)
    model = load(out)
    with torch.no_grad():
        got = model(mixed.x)
    agree = (got.argmax(1) == mixed.want.argmax(1)).float().mean()
    assert agree >= 0.5 and float((got - mixed.want).abs().max()) < 0.5 * float(
        mixed.want.abs().max())


def _quantized_names(model) -> dict[str, int]:
    return {f"{m}.{n}" if m else n: bits for m, n, bits in quantized_tensors(model)}


def test_onnx_stores_integers(mixed, exported):
    from searchcomp.deploy.onnx import initializer_dtypes as onnx_initializer_dtypes

    out = exported["onnx"][0]
    dtypes = onnx_initializer_dtypes(out / "model.onnx")
    assert {"INT8", "UINT8", "FLOAT"} <= set(dtypes.values())
    for name, bits in _quantized_names(mixed.model).items():
        assert name not in dtypes  # no float copy of a quantized weight
        assert dtypes[f"{name}_quant.codes"] == ("INT8" if bits == 8 else "UINT8"), name
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) == 15  # the 8-bit ones


def test_torchscript_and_state_dict_store_integers_and_pruned_shapes(mixed, exported):
    quantized = _quantized_names(mixed.model)
    state = load(exported["torchscript"][0]).state_dict()
    for name, bits in quantized.items():
        assert name not in state
        assert state[f"{name}_quant.codes"].dtype == (torch.int8 if bits == 8 else torch.uint8)

    folder = exported["state_dict"][0]
    packed = torch.load(folder / "model.pt", weights_only=True)
    for name, bits in quantized.items():
        assert packed[name].dtype == (torch.int8 if bits == 8 else torch.uint8), name
    model = load(folder)
    # pruning is physical: half of layer1.0's internal filters are gone
    assert model.layer1[0].bn1.num_features == 32 == mixed.base.layer1[0].bn1.num_features // 2
    assert not _quantized_names(model)  # the loaded model is plain float


def test_bad_input_is_one_clear_error_and_writes_nothing(mixed, tmp_path):
    out = tmp_path / "deep" / "er" / "out"
    cases = [(10_000, "has no trial 10000"), (mixed.failed, "failed"),
             (mixed.pruned, "was stopped early")]
    for trial, message in cases:
        with pytest.raises(SearchcompError, match=message):
            export_trial(mixed.space, trial, out, log=_quiet)
        assert not (tmp_path / "deep").exists()
    with pytest.raises(SearchcompError, match="unknown format"):
        export_trial(mixed.space, mixed.number, out, fmt="tflite", log=_quiet)
    out.mkdir(parents=True)
    with pytest.raises(SearchcompError, match="already exists"):
        export_trial(mixed.space, mixed.number, out, log=_quiet)
    assert list(out.iterdir()) == []
    with pytest.raises(SearchcompError, match="not a searchcomp export"):
        load(tmp_path)


BLOCKED_LOAD = """
import importlib.abc, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("optuna", "torch_pruning"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocked())
import torch
import searchcomp

x = torch.load(sys.argv[1])
with torch.no_grad():
    out = {folder: searchcomp.load(folder)(x) for folder in sys.argv[2:]}
assert not {"optuna", "torch_pruning"} & {m.split(".")[0] for m in sys.modules}
torch.save(out, sys.argv[1] + ".out")
"""


def test_load_needs_neither_optuna_nor_torch_pruning(mixed, exported, tmp_path):
    import subprocess
    import sys

    x = tmp_path / "x.pt"
    torch.save(mixed.x, x)
    folders = [str(exported[fmt][0]) for fmt in FORMATS]
    r = subprocess.run([sys.executable, "-c", BLOCKED_LOAD, str(x), *folders],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = torch.load(f"{x}.out")
    for fmt, folder in zip(FORMATS, folders, strict=True):
        if fmt == "onnx-int8":  # int8 activations: close, not equal
            assert out[folder].shape == mixed.want.shape
            continue
        torch.testing.assert_close(out[folder], mixed.want, atol=1e-4, rtol=1e-4)


def test_failure_midway_removes_the_partial_folder(mixed, tmp_path, monkeypatch):
    import searchcomp.results.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "card_markdown", broken)
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        export_trial(mixed.space, mixed.number, out, log=_quiet)
    assert not (tmp_path / "new").exists()
    _no_leftovers(tmp_path)


def test_missing_weights_are_fine_tuned_again(mixed, tmp_path):
    weights = Path(mixed.attrs["weights"])
    assert mixed.root in weights.parents  # the copy's own file, not the fixture's
    aside = weights.with_name("aside.pt")
    weights.rename(aside)
    lines: list[str] = []
    try:
        card = export_trial(mixed.space, mixed.number, tmp_path / "out", finetune_epochs=1,
                            log=lines.append)
    finally:
        aside.rename(weights)
    assert card["refinetuned"] is True and card["finetune_epochs"] == 1
    assert "missing" in card["weights"]
    assert any("missing" in line and "fine-tuning it again" in line for line in lines)
    assert any("1 more epoch" in line for line in lines)
    with torch.no_grad():
        assert load(tmp_path / "out")(mixed.x).shape == mixed.want.shape
