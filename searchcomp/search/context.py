"""What every trial of a study shares, prepared once per process: the data on the compute
device, the base (and its measurement, taken once per study), the blocks, calibration
batches and the teacher's logits for the fine-tune subset (computed once per study)."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchcomp.compute import Compute, compute_for, resolve_device
from searchcomp.compute.device import DeviceError
from searchcomp.config import Space
from searchcomp.config.int8 import Int8Scheme, get_scheme
from searchcomp.data import Batches, Splits, load_splits
from searchcomp.measure import measure
from searchcomp.measure.intervals import accuracy_attrs
from searchcomp.models import Block, check_inputs, input_shape, obtain_base, state_digest
from searchcomp.search import shared
from searchcomp.search.files import write_atomic
from searchcomp.search.locks import file_lock
from searchcomp.train import DEFAULT_COMPUTE, teacher_logits

#: images whose activations drive local fits and init errors (more costs build time)
CALIB_IMAGES = 64


@dataclass
class TrialContext:
    """Everything a trial needs, derived deterministically from the space."""

    space: Space
    base: nn.Module
    base_metrics: dict[str, Any]
    splits: Splits
    blocks: list[Block]
    head_name: str
    calib: torch.Tensor
    grad_batches: list[tuple[torch.Tensor, torch.Tensor]]
    weights_dir: Path
    #: where and in what precision trials train (the base and the data live there)
    compute: Compute = DEFAULT_COMPUTE
    #: the deployment target latency is timed on
    measure_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: the base's logits for every image of the fine-tune subset (None: loss is not distill)
    teacher_logits: torch.Tensor | None = None
    #: identifies the base and how it was measured; equal keys = reusable measurement
    base_key: dict[str, Any] = field(default_factory=dict)
    #: True when this process measured the base (False: the study's stored figures)
    base_measured: bool = True
    #: onnxruntime-int8: the scheme blocks at <= 8 bits simulate and their files use
    #: (None in float runtimes), and the record of how it was chosen
    int8_scheme: Int8Scheme | None = None
    int8_record: dict[str, Any] | None = None
    #: True when this process chose the scheme (False: the study's stored choice)
    int8_measured: bool = False

    @property
    def block_names(self) -> list[str]:
        """Block names in model order."""
        return [b.name for b in self.blocks]

    def scheme_for(self, attrs: dict[str, Any] | None = None) -> Int8Scheme | None:
        """The int8 scheme a trial was built with: its own record (``int8_scheme``), else the
        study's; None in float runtimes."""
        if self.int8_scheme is None:
            return None
        name = (attrs or {}).get("int8_scheme")
        return get_scheme(name) if name else self.int8_scheme

    def build(self, recipe: Any, *, init: bool = True, int8: Any = "study") -> Any:
        """:func:`searchcomp.candidate.build` of ``recipe`` on this context's base, with the
        space's pruning settings; ``int8``: the scheme to simulate (default the study's;
        None: none)."""
        from searchcomp.candidate import build

        space = self.space
        return build(self.base, recipe, self.blocks, self.head_name, self.calib,
                     prune_criterion=space.finetune.prune_criterion,
                     grad_batches=self.grad_batches, prune_round_to=space.blocks.prune_round_to,
                     init=init, int8=self.int8_scheme if int8 == "study" else int8)

    @property
    def axes(self) -> list[str]:
        """The axes every summary line of this space shows (see
        :func:`searchcomp.candidate.shown_axes`)."""
        from searchcomp.candidate import shown_axes

        return shown_axes(self.blocks)

    @property
    def known_base(self) -> dict[str, Any]:
        """The base's figures and key (and the int8 scheme's record), as :func:`prepare`
        accepts them back."""
        return {"metrics": self.base_metrics, "key": self.base_key, "int8": self.int8_record}


def measure_device(space: Space) -> torch.device:
    """The device of ``measure.device``; a device this machine lacks is a one-line error
    naming the field's line."""
    try:
        return resolve_device(space.measure.device)
    except DeviceError as e:
        raise space.error("measure.device", str(e)) from None


def measure_model(model: nn.Module, space: Space, device: torch.device,
                  calib: torch.Tensor | None = None) -> dict[str, Any]:
    """Params, MiB, FLOPs and latency of ``model`` as the space measures them, with what
    measured them (``calib``: training images, for the ``onnxruntime-int8`` calibration)."""
    mm = space.measure
    met = measure(model, input_shape(space.model), batch_size=mm.batch_size, threads=mm.threads,
                  runs=mm.runs, warmup=mm.warmup, runtime=mm.runtime, device=device,
                  calib=None if calib is None else calib.detach().cpu())
    return {"params": met.params, "size_mib": met.size_mib, "latency_ms": met.latency_ms,
            "flops": met.flops, "latency_runtime": met.latency_runtime, "runtime": met.runtime,
            "cpu_features": list(met.cpu_features) if met.cpu_features is not None else None,
            "latency_p10_ms": met.latency_p10_ms, "latency_p90_ms": met.latency_p90_ms,
            "latency_under_load": met.latency_under_load}


def prepare(space: Space, *, progress: bool = True, log: Callable[[str], None] = print,
            study_name: str | None = None, device: str | None = None,
            known_base: dict[str, Any] | None = None,
            int8_scheme: str | None = None) -> TrialContext:
    """Check every input, load data, obtain the base and measure it: the reference point.

    Whatever needs only the space and the architecture (files named, blocks, every choice
    against its layer, the head) is checked on fresh weights before any download or training.

    Everything runs on the space's device (``device``, e.g. from ``--device``, overrides it).
    ``known_base`` (:attr:`TrialContext.known_base` of an earlier preparation, as a study
    stores it) is reused instead of measuring the base again when it describes the same base
    weights measured with the same settings: latency taken under other load must not replace
    the study's reference. In the ``onnxruntime-int8`` runtime the int8 scheme is
    ``int8_scheme`` when given (e.g. the one a trial to export used), else the stored choice
    of ``known_base`` when it was made for the same base, settings and CPU, else
    ``measure.int8_scheme`` (``auto``: chosen here by measurement,
    :mod:`searchcomp.search.int8_scheme`, and recorded in the study folder).

    Workers of one study on this machine prepare one at a time (:mod:`.shared`): the first
    trains or loads the base, computes the teacher's logits, measures the base and chooses
    the int8 scheme; the others wait, then reuse them from the files it left.
    """
    # -- shared preparation (issue 21): `held` keeps the study's preparation lock until the
    # context is ready; _prepare takes it once the inputs are checked, before any file work
    with contextlib.ExitStack() as held:
        return _prepare(space, progress=progress, log=log, study_name=study_name,
                        device=device, known_base=known_base, held=held,
                        int8_scheme=int8_scheme)


def _prepare(space: Space, *, progress: bool, log: Callable[[str], None],
             study_name: str | None, device: str | None,
             known_base: dict[str, Any] | None, held: contextlib.ExitStack,
             int8_scheme: str | None = None) -> TrialContext:
    compute = compute_for(space, device)
    mdev = measure_device(space)
    arch = check_inputs(space)
    log(f"compute: {compute.describe()}; latency timed on {mdev}"
        + "".join(f"\n  {note}" for note in compute.notes))
    held.enter_context(shared.preparing(space, study_name))  # one worker at a time from here
    splits = load_splits(space.data, space.model).on(compute.device)
    base = obtain_base(space, splits, progress=progress, log=log, compute=compute)
    blocks, head_name = arch.blocks, arch.head_name
    n_calib = space.finetune.calib_batches
    grad_batches = []
    # a fresh copy: the base's training advanced the shared one's epoch (cached or not)
    for i, batch in enumerate(splits.train.reseeded(space.data.seed)):
        if i >= n_calib:
            break
        grad_batches.append(batch)
    calib = torch.cat([x for x, _ in grad_batches])[:CALIB_IMAGES]
    digest = state_digest(base.model)
    key = {"weights": digest, "measure": space.measure.model_dump(mode="json")}
    known_base = shared.known_figures(space, study_name, key, known_base)  # an earlier worker's
    if known_base and known_base.get("key") == key and known_base.get("metrics"):
        base_metrics, measured = dict(known_base["metrics"]), False
    else:
        base_metrics = {"accuracy": base.val_accuracy,
                        **accuracy_attrs(base.val_accuracy, splits.val.size),
                        **measure_model(base.model, space, mdev, calib)}
        measured = True
        shared.store_figures(space, study_name, key, base_metrics)  # for the other workers
    study_dir = Path(space.studies_dir) / (study_name or space.name)
    record, chose = None, False
    if space.measure.runtime == "onnxruntime-int8":
        record, chose = _int8_record(space, base.model, arch, calib, splits, base.val_accuracy,
                                     digest, study_dir, known_base, int8_scheme, log)
    logits = None
    if space.finetune.loss == "distill":
        logits = cached_teacher_logits(base.model, splits.train, compute, digest, study_dir,
                                       log)
    return TrialContext(space, base.model, base_metrics, splits, blocks, head_name, calib,
                        grad_batches, study_dir / "trials", compute, mdev, logits, key, measured,
                        get_scheme(record["scheme"]) if record else None, record, chose)


def _int8_record(space: Space, base: nn.Module, arch, calib: torch.Tensor, splits: Splits,
                 accuracy: float, digest: str, study_dir: Path,
                 known_base: dict[str, Any] | None, fixed: str | None,
                 log: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """The int8 scheme's record (see :func:`prepare`) and whether it was made here."""
    from searchcomp.search.int8_scheme import fixed_scheme, measure_schemes, scheme_key

    if fixed:
        return {**fixed_scheme(fixed), "reason": f"{fixed}: the scheme the trial used",
                "chosen_by": "trial"}, False
    if space.measure.int8_scheme != "auto":
        record = fixed_scheme(space.measure.int8_scheme)
        log(f"int8: scheme {record['reason']}")
        return record, False
    import json

    key = scheme_key(space, digest)
    path = study_dir / ("int8-scheme-" + hashlib.sha256(
        json.dumps(key, sort_keys=True).encode()).hexdigest()[:16] + ".json")
    stored = (known_base or {}).get("int8")
    if stored and stored.get("key") == key:
        log(f"int8: scheme {stored['reason']} (chosen earlier for this study on this CPU)")
        return stored, False
    study_dir.mkdir(parents=True, exist_ok=True)
    # one worker measures; the others of the study on this machine wait and read its record
    with file_lock(study_dir / ".int8-scheme.lock"):
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except (OSError, ValueError):  # a damaged file: choose again and replace it
                stored = None
            if stored and stored.get("key") == key:
                log(f"int8: scheme {stored['reason']} (chosen earlier on this CPU: {path})")
                return stored, True
        record = measure_schemes(space, base, arch.blocks, arch.head_name, calib, splits.val,
                                 accuracy, study_dir, log)
        record["key"] = key
        text = json.dumps(record, indent=1)
        write_atomic(path, lambda tmp: Path(tmp).write_text(text), "the int8 scheme's record")
    return record, True


def cached_teacher_logits(teacher: nn.Module, train: Batches, compute: Compute, digest: str,
                          folder: Path, log: Callable[[str], None] = print) -> torch.Tensor:
    """The teacher's logits for every image of ``train``: read from ``folder`` when a file of
    the same base (``digest``), images and evaluation precision is there, else computed once
    and written there for the study's other workers and later runs."""
    h = hashlib.sha256(f"{digest}:{compute.eval_precision}:{train.size}".encode())
    # the images themselves when in memory; a streamed subset by which images it holds
    tensors = ((train.x, train.y) if train.stream is None
               else (train.stream.indices.to(torch.int64),))
    for t in (*tensors, train.mean, train.std):
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    path = folder / f"teacher-{h.hexdigest()[:16]}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True).to(compute.device)
        except Exception:  # a damaged file: compute again and replace it
            pass
    t0 = time.perf_counter()
    logits = teacher_logits(teacher, train, compute)
    log(f"teacher: logits of the base for the {train.size} fine-tune images in "
        f"{time.perf_counter() - t0:.1f} s, reused by every trial ({path})")
    cpu = logits.cpu()
    write_atomic(path, lambda tmp: torch.save(cpu, tmp), "the teacher's logits")
    return logits
