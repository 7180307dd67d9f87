"""`searchcomp export`: one trial of a study as a model you can ship, with its model card.

The candidate is rebuilt from the base and the trial's recipe (never unpickled), gets the
trial's fine-tuned weights (or is fine-tuned again if they are gone), optionally fine-tunes
longer, and is written in one of the formats of :mod:`searchcomp.deploy.formats` together
with ``recipe.yaml`` (everything :func:`searchcomp.load` needs to rebuild it, without the
training data) and a model card (``card.json``, ``card.md``) comparing it with the base,
both measured on the written files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from optuna.trial import TrialState
from torch import nn

from searchcomp.candidate import Recipe
from searchcomp.choices.actquant import INPUT, OUTPUT, calibrate_activations
from searchcomp.choices.quant import quantized_tensors
from searchcomp.config import Space
from searchcomp.deploy.formats import FORMATS, write_artifact
from searchcomp.deploy.load import load
from searchcomp.deploy.runtime import get_runtime, runtime_of_format
from searchcomp.errors import SearchcompError
from searchcomp.measure import count_params, time_artifact
from searchcomp.measure.intervals import wilson_interval
from searchcomp.models import input_shape
from searchcomp.results.card import card_markdown, with_ci
from searchcomp.search.study import SKIPPED, STOPPED_REASON
from searchcomp.train import evaluate, finetune

#: outputs of a float exported file may differ from the trial model's by float reordering only
MATCH_ATOL = 1e-3
#: a trial's validation accuracy and its file's on the same split further apart than this
#: (0.5 pt) are flagged on the card: the search's figure would not describe the file
ACCURACY_GAP = 0.005


def export_trial(space: Space, trial: int, out: str | os.PathLike[str], fmt: str | None = None,
                 finetune_epochs: float = 0, storage: str | None = None,
                 study_name: str | None = None, log: Callable[[str], None] = print,
                 progress: bool = False, device: str | None = None) -> dict[str, Any]:
    """Export trial number ``trial`` of the study of ``space`` into the new folder ``out``.

    Everything is written into a temporary folder next to ``out`` and renamed at the end,
    so ``out`` either holds a complete export or does not exist. Returns the model card.
    ``fmt`` defaults to the artifact of the runtime the trial was measured in
    (``measure.runtime``: torch -> state_dict, torchscript -> torchscript, onnxruntime ->
    onnx, onnxruntime-int8 -> onnx-int8), so the export is what the front showed.
    Raises :class:`SearchcompError` for an unknown format, an ``out`` that exists, an
    unknown trial or one that did not complete. Fine-tuning runs on ``device`` (default: the
    space's); the artifact is written, checked and measured from the CPU.
    """
    if fmt is not None and fmt not in FORMATS:
        raise SearchcompError(f"--format: unknown format {fmt!r}; use one of "
                              f"{', '.join(FORMATS)}")
    if finetune_epochs < 0:
        raise SearchcompError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise SearchcompError(f"{out} already exists; export writes a new folder: remove it "
                              "or choose another --out")
    from searchcomp.search.study import open_study

    name = study_name or space.name
    opened = open_study(space, storage=storage, study_name=name, load_only=True)
    frozen = _completed_trial(opened, trial, name)
    record = opened.user_attrs.get("int8_scheme")
    fmt = fmt or get_runtime(_trial_runtime(space, frozen)).format
    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        raise SearchcompError(f"--out: cannot write next to {out}: {e}") from None
    try:
        card = _export(space, frozen, tmp, fmt, finetune_epochs, name, log, progress, device,
                       record)
        if out.exists():
            raise SearchcompError(f"{out} appeared while exporting; nothing was written there")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first
            try:
                p.rmdir()
            except OSError:
                break
        raise
    e, b = card["exported"], card["base"]
    log(f"exported trial {trial} ({fmt}) to {out}: test accuracy {with_ci(e, 'test')} "
        f"(base {b['test_accuracy']:.4f}), {e['file_mib']:.3f} MiB (base {b['file_mib']:.3f}), "
        f"{e['latency_ms']:.2f} ms (base {b['latency_ms']:.2f}) on {e['runtime']}")
    if card["accuracy_gap_flag"]:
        log(f"warning: {card['accuracy_gap_note']}")
    return card


def _export_scheme(space: Space, attrs: dict[str, Any], study: str, int8: bool) -> str | None:
    """The int8 scheme an ``onnx-int8`` export uses: the trial's own (it fine-tuned with it),
    else the space's fixed one, else the first scheme whose kernel is exact on this CPU
    (a trial searched in a float runtime has none). None for float formats."""
    if not int8:
        return None
    if attrs.get("int8_scheme"):
        return str(attrs["int8_scheme"])
    if attrs.get("runtime") == "onnxruntime-int8":
        from searchcomp.config.int8 import DEFAULT_SCHEME

        return DEFAULT_SCHEME  # searched before schemes were chosen: what it used
    if space.measure.int8_scheme != "auto":
        return space.measure.int8_scheme
    from searchcomp.config.int8 import SCHEMES
    from searchcomp.deploy.schemes import kernel_exact

    return next((n for n in SCHEMES if kernel_exact(n)), next(iter(SCHEMES)))


def _scheme_card(record: dict[str, Any] | None, scheme: str) -> dict[str, Any]:
    """What the card says of the int8 scheme: its name and the study's record of the choice
    (the table measured on its CPU), when the study has one for that scheme."""
    if not record or record.get("scheme") != scheme:
        record = None
    return {"scheme": scheme, "record": record,
            "reason": record["reason"] if record else f"{scheme}: the scheme the trial used"}


def _trial_runtime(space: Space, frozen) -> str:
    """The runtime a trial was measured in (trials from before runtimes were recorded: the
    space's)."""
    return str(frozen.user_attrs.get("runtime") or space.measure.runtime)


def _completed_trial(study, number: int, name: str):
    trials = study.get_trials(deepcopy=False)
    t = next((t for t in trials if t.number == number), None)
    if t is None:
        have = f"trials are 0..{max(x.number for x in trials)}" if trials else "it has no trials"
        raise SearchcompError(f"--trial: study {name!r} has no trial {number} ({have})")
    a = t.user_attrs
    if t.state == TrialState.FAIL:
        raise SearchcompError(f"--trial: trial {number} failed "
                              f"({a.get('fail_reason', 'no reason recorded')}); only completed "
                              "trials can be exported")
    if t.state == TrialState.PRUNED:
        what = "was skipped (never run)" if a.get(SKIPPED) else \
            f"was stopped early ({a.get(STOPPED_REASON, 'below the accuracy floor')})"
        raise SearchcompError(f"--trial: trial {number} {what}; only completed trials can "
                              "be exported")
    if t.state != TrialState.COMPLETE:
        raise SearchcompError(f"--trial: trial {number} is {t.state.name.lower()}, not "
                              "complete; wait for it to finish")
    if not a.get("recipe"):
        raise SearchcompError(f"--trial: trial {number} has no stored recipe")
    return t


def _export(space: Space, frozen, folder: Path, fmt: str, epochs: float, study: str,
            log: Callable[[str], None], progress: bool, device: str | None,
            record: dict[str, Any] | None = None) -> dict[str, Any]:
    from searchcomp.search.trial import prepare

    a, number = frozen.user_attrs, frozen.number
    runtime = runtime_of_format(fmt)
    scheme = _export_scheme(space, a, study, runtime.int8)
    ctx = prepare(space, progress=progress, log=log, study_name=study, device=device,
                  int8_scheme=scheme)
    recipe = Recipe.from_dict(a["recipe"])
    seed = int(a.get("seed", space.search.seed + number))  # the seed the trial really used
    weights = _weights_file(a.get("weights"), ctx.weights_dir)
    torch.manual_seed(seed)
    # with stored weights to load, the replacements need their shapes, not their init
    built = ctx.build(recipe, init=weights is None, int8=scheme)
    model = built.model
    if weights is None:
        log(f"trial {number}: its fine-tuned weights ({a.get('weights')}) are missing; "
            f"fine-tuning it again as the search did (seed {seed})")
        finetune(model, ctx.base, ctx.splits.train.reseeded(seed), ctx.splits.val,
                 space.finetune.model_copy(update={"min_accuracy": None}),
                 compute=ctx.compute, teacher_logits=ctx.teacher_logits)
        calibrate_activations(model, ctx.calib)
        source = f"missing ({a.get('weights')}): re-fine-tuned with seed {seed}"
    else:
        _load_weights(model, weights, number, ctx.calib, log)
        source = str(weights)
    if epochs:
        log(f"trial {number}: fine-tuning {epochs:g} more epoch(s) before export")
        cfg = space.finetune.model_copy(update={"epochs": float(epochs), "steps": None,
                                                "min_accuracy": None})
        finetune(model, ctx.base, ctx.splits.train.reseeded(seed), ctx.splits.val, cfg,
                 compute=ctx.compute, teacher_logits=ctx.teacher_logits)
        calibrate_activations(model, ctx.calib)
    # the artifacts are written, loaded back and measured on the CPU
    cpu = torch.device("cpu")
    model.to(cpu).eval()
    ctx.base.to(cpu)
    ctx.splits = ctx.splits.on(cpu)
    ctx.calib = ctx.calib.to(cpu)
    shape = input_shape(space.model)
    info = {"searchcomp": _version(), "format": fmt, "file": FORMATS[fmt], "study": study,
            "trial": number, "space": space.file, "model": space.model.model_dump(mode="json"),
            "input_shape": list(shape),
            "normalize": {"mean": ctx.splits.train.mean.flatten().tolist(),
                          "std": ctx.splits.train.std.flatten().tolist(),
                          "kind": ctx.splits.normalize},
            "recipe": recipe.to_dict(), "summary": recipe.summary(ctx.block_names, ctx.axes),
            "blocks": [{"name": b.name, "convs": list(b.convs)} for b in ctx.blocks],
            "head_name": ctx.head_name, "resized": built.resized}
    probe = next(iter(ctx.splits.test))[0][:8]
    log(f"trial {number}: writing {fmt} and measuring it on the test split")
    exported = _write_and_measure(model, info, folder, ctx, probe, runtime.int8)
    with tempfile.TemporaryDirectory(prefix="searchcomp-base-") as tmp:
        base_info = {**info, "trial": None, "recipe": Recipe().to_dict(), "resized": {},
                     "summary": Recipe().summary(ctx.block_names, ctx.axes)}
        log("base: writing it the same way, for the comparison")
        base = _write_and_measure(ctx.base, base_info, Path(tmp), ctx, probe, runtime.int8)
    exported.update(params=count_params(model), model_val_accuracy=evaluate(model, ctx.splits.val))
    base.update(params=count_params(ctx.base), model_val_accuracy=ctx.base_metrics["accuracy"])
    searched = {k: a.get(k) for k in ("accuracy", "params", "size_mib", "latency_ms",
                                      "latency_runtime", "flops", "runtime", "cpu_features")}
    searched["runtime"] = _trial_runtime(space, frozen)
    same_artifact = get_runtime(searched["runtime"]).format == fmt
    trial_size = float(a["size_mib"]) if a.get("size_mib") is not None else None
    trial_acc = float(a["accuracy"]) if a.get("accuracy") is not None else None
    gap = None if trial_acc is None else trial_acc - exported["val_accuracy"]
    bits: dict[str, int] = {}
    for _, _, b in quantized_tensors(model):
        bits[str(b)] = bits.get(str(b), 0) + 1
    card = {
        "study": study, "trial": number, "format": fmt, "file": FORMATS[fmt],
        "runtime": exported["runtime"], "runtime_name": runtime.name,
        "recipe": info["recipe"], "summary": info["summary"],
        "exported": exported, "base": base, "search": searched,
        "same_artifact_as_search": same_artifact,
        "size_mib_agreement": (exported["file_mib"] / trial_size - 1.0) if trial_size else None,
        "accuracy_gap": gap, "accuracy_gap_limit": ACCURACY_GAP,
        "accuracy_gap_flag": gap is not None and abs(gap) > ACCURACY_GAP + 1e-9,
        "accuracy_gap_note": None if gap is None else (
            f"the trial's validation accuracy {trial_acc:.4f} and the written file's "
            f"{exported['val_accuracy']:.4f} on the same split differ by {100 * gap:+.2f} pt "
            f"(more than {100 * ACCURACY_GAP:.1f} pt: the search's figure does not describe "
            "this file)" if abs(gap) > ACCURACY_GAP + 1e-9 else
            f"{100 * gap:+.2f} pt, within {100 * ACCURACY_GAP:.1f} pt"),
        "quantized_tensors": bits,
        "int8_scheme": _scheme_card(record, scheme) if scheme else None,
        "weights": source, "refinetuned": weights is None, "finetune_epochs": float(epochs),
        "test_split": {"dataset": space.data.dataset, "images": ctx.splits.test.size},
        "val_split": {"images": ctx.splits.val.size},
        "measure": space.measure.model_dump(), "input": {"shape": list(shape),
                                                        "normalize": info["normalize"]},
        "searchcomp": info["searchcomp"],
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (folder / "card.md").write_text(card_markdown(card))
    return card


def _load_weights(model: nn.Module, weights: Path, number: int, calib: torch.Tensor,
                  log: Callable[[str], None]) -> None:
    """Load a trial's fine-tuned state. The simulated int8 ranges are the only keys allowed
    to differ: a trial searched in another runtime has none (they are calibrated here) or
    some the chosen format does not use (dropped)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    own = model.state_dict()
    simulated = (f".{INPUT}.", f".{OUTPUT}.")
    state = {k: v for k, v in state.items()
             if k in own or not any(s in f".{k}" for s in simulated)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as e:
        raise SearchcompError(f"trial {number}: {weights} does not fit the rebuilt "
                              f"candidate ({str(e).splitlines()[0]})") from None
    wrong = unexpected + [k for k in missing if not any(s in f".{k}" for s in simulated)]
    if wrong:
        raise SearchcompError(f"trial {number}: {weights} does not fit the rebuilt candidate "
                              f"(keys {wrong[:3]}{' ...' if len(wrong) > 3 else ''})")
    if missing:
        log(f"trial {number}: searched without simulated int8 activations; calibrating "
            "them on the training images (the int8 file is then post-training quantized)")
        calibrate_activations(model, calib)


def _weights_file(stored: str | None, weights_dir: Path) -> Path | None:
    """The trial's weights: the stored path, else the same name in the study's folder."""
    if not stored:
        return None
    for p in (Path(stored), weights_dir / Path(stored).name):
        if p.is_file():
            return p
    return None


def _write_and_measure(model: nn.Module, info: dict[str, Any], folder: Path, ctx,
                       probe: torch.Tensor, int8: bool) -> dict[str, Any]:
    """Write ``model`` as ``info`` says, load the file back, and measure what was loaded:
    accuracy on the test and validation splits by running the file itself, its bytes, its
    latency in its runtime. Float formats must compute what ``model`` computes (else: an
    export bug); an int8 file rounds activations, which the accuracy gap measures."""
    path = write_artifact(model, info, folder, calib=ctx.calib)
    loaded = load(folder)
    with torch.no_grad():
        want, got = model.eval()(probe), loaded(probe)
    diff = float((want - got).abs().max())
    if not int8 and not diff <= MATCH_ATOL * (1.0 + float(want.abs().max())):
        raise RuntimeError(f"the written {info['format']} model's outputs differ from the "
                           f"candidate's by {diff:.3g}: an export bug, please report it")
    mm = ctx.space.measure
    lat = time_artifact(folder, batch_size=mm.batch_size, threads=mm.threads, runs=mm.runs,
                        warmup=mm.warmup, loaded=loaded)
    nbytes = path.stat().st_size
    test_acc, val_acc = evaluate(loaded, ctx.splits.test), evaluate(loaded, ctx.splits.val)
    return {"test_accuracy": test_acc,
            "test_accuracy_interval": list(wilson_interval(test_acc, ctx.splits.test.size)),
            "val_accuracy": val_acc,
            "val_accuracy_interval": list(wilson_interval(val_acc, ctx.splits.val.size)),
            "file_bytes": nbytes, "file_mib": nbytes / 2**20, "latency_ms": lat.median_ms,
            "runtime": lat.runtime,
            "cpu_features": list(lat.cpu_features) if lat.cpu_features is not None else None,
            "max_abs_diff": diff}


def _version() -> str:
    from searchcomp import __version__

    return __version__
