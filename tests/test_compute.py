"""Devices and precision: one device object handed down through a whole trial, mixed precision
that still learns, cached teacher logits equal to a live teacher, the base measured once."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import torch

from searchcomp.candidate import Recipe
from searchcomp.compute import (
    Compute,
    DeviceError,
    auto_precision,
    compute_for,
    cpu_has_bf16,
    resolve_compute,
    resolve_device,
)
from searchcomp.config import load_space
from searchcomp.data import Batches
from searchcomp.errors import SearchcompError
from searchcomp.models import build_model
from searchcomp.search.trial import prepare, run_trial
from searchcomp.train import distill_loss, finetune, teacher_logits, teacher_outputs

from .conftest import ROOT

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_CUDA, reason="no CUDA device on this machine: the CUDA trial runs only where one is"))]


def _quiet(_msg: str) -> None:
    pass


def test_auto_device_and_explicit_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if HAS_CUDA else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == want
    with pytest.raises(DeviceError, match="is not a device"):
        resolve_device("gpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda:0")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
def test_cli_device_cuda_without_cuda_exits_2_with_one_line(tiny_space_file, tmp_path):
    r = subprocess.run([sys.executable, "-m", "searchcomp", "run", str(tiny_space_file),
                        "--device", "cuda"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: --device cuda: CUDA is not available")
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").iterdir())


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
def test_space_device_cuda_error_names_the_line(tmp_path, tiny_space_file):
    text = tiny_space_file.read_text() + "device: cuda\n"
    tiny_space_file.write_text(text)
    space = load_space(tiny_space_file)
    with pytest.raises(SearchcompError) as e:
        compute_for(space)
    line = text.splitlines().index("device: cuda") + 1
    assert f"{tiny_space_file}:{line}: device: cuda: CUDA is not available" in str(e.value)
    measured = load_space(tiny_space_file, ["device=cpu", "measure.device=cuda"])
    with pytest.raises(SearchcompError, match="measure.device: cuda: CUDA is not available"):
        prepare(measured, progress=False, log=_quiet)


def test_space_rejects_unknown_devices_and_gpu_timing_in_onnxruntime(tiny_space_file):
    with pytest.raises(SearchcompError, match="unknown device 'gpu'"):
        load_space(tiny_space_file, ["device=gpu"])
    with pytest.raises(SearchcompError, match="needs runtime: torch"):
        load_space(tiny_space_file, ["measure.device=cuda", "measure.runtime=onnxruntime"])
    with pytest.raises(SearchcompError, match="measure.device"):
        load_space(tiny_space_file, ["measure.device=auto"])


def test_precision_auto_follows_the_hardware():
    cpu = torch.device("cpu")
    precision, why = auto_precision(cpu)
    assert precision == ("bf16" if cpu_has_bf16() else "fp32") and why
    c = resolve_compute("cpu", "auto")
    assert c.precision == precision and c.notes
    assert c.channels_last == (precision != "fp32")  # auto: NHWC with mixed precision
    assert c.eval_precision == "fp32"
    fp32 = resolve_compute("cpu", "fp32")
    assert (fp32.precision, fp32.channels_last, fp32.notes) == ("fp32", False, ())
    same = resolve_compute("cpu", "bf16", eval_precision="train", channels_last=False)
    assert (same.eval_precision, same.channels_last) == ("bf16", False)
    assert "bf16 autocast" in same.describe()
    assert "gradient scaler" in resolve_compute("cpu", "fp16").describe()
    assert resolve_compute("cpu", "fp16").grad_scaler().is_enabled()
    assert not same.grad_scaler().is_enabled()


def test_no_cuda_calls_anywhere_in_the_package():
    """One device object is passed down; ``.cuda()`` would bypass it."""
    found = []
    for path in (ROOT / "searchcomp").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            # torch.cuda.* functions are fine; a call of a .cuda method (x.cuda()) is not
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "cuda":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f".cuda() calls: {found}"


def test_batches_and_models_move_to_the_meta_device():
    """The data path and the training layout follow the device they are given (``meta``:
    shapes only, so nothing can silently stay on the CPU)."""
    x = torch.randint(0, 255, (10, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(10) % 3
    b = Batches(x, y, 4, torch.zeros(1), torch.ones(1), shuffle=True, seed=3).on("meta")
    seen = [(i, xb, yb) for i, xb, yb in b.indexed()]
    assert [len(i) for i, _, _ in seen] == [4, 4, 2]
    assert all(xb.device.type == "meta" and yb.device.type == "meta" for _, xb, yb in seen)
    assert sorted(torch.cat([i for i, _, _ in seen]).tolist()) == list(range(10))
    model = build_model(load_space(ROOT / "spaces" / "resnet18-fashion.yaml").model)
    meta = Compute(torch.device("meta"), "bf16", channels_last=True)
    meta.train_layout(model)
    assert all(t.device.type == "meta" for t in [*model.parameters(), *model.buffers()])
    logits = teacher_logits(model.eval(), b, meta)
    assert logits.device.type == "meta" and logits.shape == (10, 10)


def _audit(model: torch.nn.Module, device: torch.device, seen: list) -> list:
    """Forward pre-hooks that record any module input or parameter off ``device``."""
    def hook(m, args):
        for a in args:
            if isinstance(a, torch.Tensor) and a.device != device:
                seen.append(f"{type(m).__name__} input on {a.device}")
        for n, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            if t.device != device:
                seen.append(f"{type(m).__name__}.{n} on {t.device}")
    return [m.register_forward_pre_hook(hook) for m in model.modules()]


@pytest.mark.parametrize("device", DEVICES)
def test_a_whole_trial_runs_on_the_configured_device(tiny_space_file, device, monkeypatch):
    space = load_space(tiny_space_file, ["finetune.steps=3", "finetune.prune_criterion=taylor"])
    ctx = prepare(space, progress=False, log=_quiet, device=device)
    dev = ctx.compute.device
    assert dev.type == device
    assert all(t.device == dev for t in [*ctx.base.parameters(), *ctx.base.buffers()])
    assert ctx.calib.device == dev and all(x.device == dev for x, _ in ctx.grad_batches)
    assert ctx.teacher_logits.device == dev
    off: list[str] = []
    batches: list[torch.device] = []
    real_indexed = Batches.indexed

    def indexed(self):
        for i, x, y in real_indexed(self):
            batches.extend([x.device, y.device])
            yield i, x, y

    monkeypatch.setattr(Batches, "indexed", indexed)
    import searchcomp.search.trial as trial_mod

    real_finetune = trial_mod.finetune

    def audited_finetune(model, *a, **k):
        hooks = _audit(model, dev, off)
        try:
            return real_finetune(model, *a, **k)
        finally:
            for h in hooks:
                h.remove()

    monkeypatch.setattr(trial_mod, "finetune", audited_finetune)
    names = ctx.block_names
    recipe = Recipe({names[0]: {"conv": "separable", "prune": 0.5, "bits": 8},
                     names[1]: {"conv": "meta:4"}, names[2]: {"conv": "conv3d:8", "bits": 4}},
                    "meta:2")
    out = run_trial(ctx, recipe, seed=1, trial_id="dev")
    assert not off, off[:5]
    assert batches and set(batches) == {dev}
    assert out.finetune_steps == 3 and 0.0 <= out.metrics["accuracy"] <= 1.0
    assert set(out.phase_seconds) == {"build", "build.prune", "build.replace", "build.quantize",
                                      "finetune", "evaluate", "measure", "save"}
    assert all(s >= 0 for s in out.phase_seconds.values())
    saved = torch.load(out.weights, weights_only=True)
    assert all(t.device.type == "cpu" for t in saved.values())


def _tiny_task(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 255, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = (x.float().mean(dim=(1, 2, 3)) > 127).long() + 2 * (x[:, 0, 0, 0] > 127).long()
    mean, std = torch.tensor([0.5]), torch.tensor([0.3])
    return (Batches(x, y, 16, mean, std, shuffle=True, seed=seed),
            Batches(x, y, 32, mean, std))


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4))


def _loss_on(model, batches) -> float:
    model.eval()
    with torch.no_grad():
        return float(sum(torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
                         for x, y in batches)) / batches.size


def test_bf16_fine_tune_runs_and_lowers_the_loss():
    from searchcomp.config import FinetuneConfig

    train, val = _tiny_task()
    model = _tiny_model()
    before = _loss_on(model, val)
    bf16 = Compute(torch.device("cpu"), "bf16", channels_last=True)
    # training from scratch: the former default (Adam, constant lr), not the gentle fine-tune
    cfg = FinetuneConfig(steps=60, lr=0.01, loss="ce", optimizer="adam", warmup=0.0,
                         schedule="constant")
    res = finetune(model, None, train, val, cfg, compute=bf16)
    after = _loss_on(model, val)
    assert res.steps == 60 and after < 0.8 * before, (before, after)
    # handed back in the plain layout: what is measured and saved does not depend on NHWC
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cached_teacher_loss_equals_live_teacher_loss(precision):
    from searchcomp.config import FinetuneConfig

    train, val = _tiny_task(1)
    teacher = _tiny_model()
    compute = Compute(torch.device("cpu"), precision)
    cached = teacher_logits(teacher, train, compute)
    student = _tiny_model()
    torch.manual_seed(1)
    student[0].weight.data.add_(0.1 * torch.randn_like(student[0].weight))
    for idx, x, y in train.reseeded(5).indexed():  # every batch of a shuffled epoch
        with compute.autocast():
            out = student(x).float()
        live = distill_loss(out, teacher_outputs(teacher, x, compute), y, 0.5, 4.0)
        from_cache = distill_loss(out, cached[idx], y, 0.5, 4.0)
        torch.testing.assert_close(from_cache, live, rtol=1e-5, atol=1e-6)
    # and whole fine-tunes from the same start end at the same weights
    cfg = FinetuneConfig(steps=8, lr=1e-3, loss="distill")
    a, b = _tiny_model(), _tiny_model()
    ra = finetune(a, teacher, train.reseeded(2), val, cfg, compute=compute)
    rb = finetune(b, None, train.reseeded(2), val, cfg, compute=compute, teacher_logits=cached)
    assert abs(ra.final_loss - rb.final_loss) < 1e-4
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_teacher_logits_are_computed_once_per_study(tiny_space_file):
    space = load_space(tiny_space_file, ["finetune.steps=2"])
    logs: list[str] = []
    first = prepare(space, progress=False, log=logs.append)
    assert sum("teacher: logits" in m for m in logs) == 1
    files = list((first.weights_dir.parent).glob("teacher-*.pt"))
    assert len(files) == 1
    logs.clear()
    again = prepare(space, progress=False, log=logs.append)
    assert not any("teacher: logits" in m for m in logs), "the study's logits were recomputed"
    assert torch.equal(first.teacher_logits, again.teacher_logits)
    ce = prepare(load_space(tiny_space_file, ["finetune.loss=ce"]), progress=False, log=_quiet)
    assert ce.teacher_logits is None


def test_base_is_measured_once_per_study(tiny_space_file):
    from searchcomp.search.api import run_search
    from searchcomp.search.study import open_study

    space = load_space(tiny_space_file, ["finetune.steps=1", "search.seed_configs=[]"])
    logs: list[str] = []
    run_search(space, trials=1, quiet=True, log=logs.append)
    assert any(m.startswith("compute: cpu") for m in logs)
    stored = open_study(space, load_only=True).user_attrs["base"]
    logs.clear()
    ctx_calls = []
    import searchcomp.search.context as context

    real = context.measure_model

    def counting(*a, **k):
        ctx_calls.append(1)
        return real(*a, **k)

    context.measure_model = counting
    try:
        run_search(space, trials=2, quiet=True, log=logs.append)
    finally:
        context.measure_model = real
    assert any("as measured earlier for this study" in m for m in logs), logs
    assert len(ctx_calls) == 0, "the base was measured again"
    assert open_study(space, load_only=True).user_attrs["base"] == stored
    # other measuring settings: the old figure no longer applies
    other = load_space(tiny_space_file, ["finetune.steps=1", "search.seed_configs=[]",
                                         "measure.runs=31"])
    logs.clear()
    run_search(other, trials=3, quiet=True, log=logs.append)
    assert not any("as measured earlier" in m for m in logs)


def test_ray_trials_train_on_the_gpu_ray_gave_them():
    from searchcomp.search.ray_backend import WorkerSpec, worker_device

    def spec(device: str) -> WorkerSpec:
        return WorkerSpec("s.yaml", (), False, "s", 0, 1, device)

    assert worker_device(spec("auto"), [3]) == "cuda"  # Ray makes its GPU the only visible
    assert worker_device(spec("cuda:1"), ["1"]) == "cuda"
    assert worker_device(spec("auto"), []) == "cpu"
    assert worker_device(spec("mps"), []) == "mps"
    assert worker_device(spec("cpu"), [0]) == "cpu"  # what the run names wins
