"""The space file: YAML parsed once into frozen, validated config objects.

Every error a user can make in the file (unknown key, wrong type, out-of-range value) comes
back as one :class:`~searchcomp.errors.SpaceError` naming the file, the field and the line.
Checks that need the model (a block glob that matches nothing, meta groups that do not divide
a layer's channels) call :meth:`Space.error` later, which finds the line the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from searchcomp.config.base import Strict as _Strict
from searchcomp.config.base import field_error as _field_error
from searchcomp.config.devices import Device, TargetDevice
from searchcomp.config.fields import line_of, split_field
from searchcomp.config.inputs import (  # noqa: F401  (re-exported: the space file's parts)
    DATASET_CHANNELS,
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    SMALL_INPUT_MAX,
    BaseSourceConfig,
    DataConfig,
    ModelConfig,
    NormalizeStats,
)
from searchcomp.config.rungs import RungsConfig  # noqa: F401  (re-exported)
from searchcomp.errors import SearchcompError, SpaceError

#: weight bit widths a block may use; 32 means float
SUPPORTED_BITS = (2, 4, 6, 8, 16, 32)
FLOAT_BITS = 32
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "size_mib": "minimize",
              "latency_ms": "minimize", "flops": "minimize"}
#: the conv and head choice that leaves a layer as it is
KEEP = "keep"
SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random", "surrogate")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_VALUE = re.compile(r"^[A-Za-z_]\w*(:-?\d+)?$")


def split_value(value: str) -> tuple[str, int | None]:
    """Split a conv or head choice value ``name`` / ``name:ARG`` into ``(name, ARG)``.

    Only the syntax is checked here (no torch): whether ``name`` is a registered choice and
    takes an argument is checked against the choice registry when the model is built."""
    text = str(value).strip()
    if not _VALUE.match(text):
        raise ValueError(f"choice value {value!r} must be 'name' or 'name:N' (N an integer), "
                         "e.g. 'keep', 'separable', 'meta:4'")
    name, _, arg = text.partition(":")
    if name == KEEP and arg:
        raise ValueError("'keep' takes no argument")
    return name, int(arg) if arg else None


class ChoiceSet(BaseModel):
    """Allowed values of each choice axis (``conv``, ``prune``, ``bits``, ``width``, a
    plugin's), e.g. ``{conv: [keep, separable], prune: [0.0, 0.5]}``; a missing key keeps the
    layer as it is.

    Only the form is checked here (no torch): each key names an axis and holds a non-empty list
    of distinct scalars. The axes (:mod:`searchcomp.choices.axes`) check the names and values
    when the model is built (``inspect``, ``run``), pointing at the same line."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("choices must be a mapping of axis -> list of values, e.g. "
                             "{conv: [keep, separable], prune: [0.0, 0.5]}")
        out = {}
        for key, v in data.items():
            if not isinstance(key, str) or not re.match(r"^[A-Za-z_]\w*$", key):
                raise ValueError(f"choice axis {key!r} must be a name, e.g. conv, prune, bits")
            if v is None:
                continue
            values = list(v) if isinstance(v, (list, tuple)) else [v]
            if not values:
                raise ValueError(f"{key}: list of values must not be empty")
            if any(isinstance(x, (dict, list, tuple)) or x is None for x in values):
                raise ValueError(f"{key}: values must be names or numbers, got {v}")
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"{key}: values repeat: {values}")
            out[key] = tuple(values)
        return out

    def get(self, axis: str) -> tuple | None:
        """The values given for ``axis``, or None."""
        return (self.__pydantic_extra__ or {}).get(axis)

    def keys(self) -> list[str]:
        """The axes given a list."""
        return list(self.__pydantic_extra__ or {})

    def merged(self, other: ChoiceSet) -> ChoiceSet:
        """This set with every axis ``other`` gives replaced by ``other``'s values."""
        return ChoiceSet(**{**(self.__pydantic_extra__ or {}), **(other.__pydantic_extra__ or {})})


class BlocksConfig(_Strict):
    """Which modules are blocks, and what may be tried on each."""

    #: ``auto`` = every residual block (torchvision BasicBlock/Bottleneck); else globs on names
    select: str | tuple[str, ...] = "auto"
    default: ChoiceSet = ChoiceSet()
    #: glob on block names -> choices that replace the defaults for matching blocks
    per_block: dict[str, ChoiceSet] = Field(default_factory=dict)
    #: classifier choices: ``keep`` or a head choice such as ``meta:G``
    head: tuple[str, ...] = (KEEP,)
    #: the classifier module; ``auto`` = the last nn.Linear
    head_module: str = "auto"
    #: pruning keeps channel counts at multiples of this (and of meta/conv3d arguments)
    prune_round_to: int = Field(1, ge=1)

    @field_validator("select", mode="before")
    @classmethod
    def _select(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    @field_validator("head", mode="before")
    @classmethod
    def _head_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("head")
    @classmethod
    def _head(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("list of values must not be empty")
        for value in v:
            split_value(value)
        if len(set(v)) != len(v):
            raise ValueError(f"values repeat: {list(v)}")
        return v


class DistillConfig(_Strict):
    """Loss = alpha * CE(y, student) + (1 - alpha) * T^2 * KL(teacher/T || student/T)."""

    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(4.0, gt=0)


class FinetuneConfig(_Strict):
    """The short fine-tune each candidate gets."""

    epochs: float = Field(1.0, gt=0)
    #: if set, a fixed number of optimizer steps instead of epochs
    steps: int | None = Field(None, ge=1)
    #: the defaults (SGD, Nesterov momentum 0.9, lr 0.01, 10 % warm-up, cosine decay) were
    #: picked by bench/finetune_defaults.py: the unchanged base keeps its accuracy within
    #: noise, and compressed candidates recover as well as or better than with Adam 5e-4
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["adam", "sgd", "rmsprop"] = "sgd"
    loss: Literal["distill", "ce"] = "distill"
    distill: DistillConfig = DistillConfig()
    #: calibration batches for local fits and the Taylor criterion
    calib_batches: int = Field(2, ge=1)
    prune_criterion: Literal["l1", "taylor"] = "l1"
    #: stop a trial whose validation accuracy part-way is below this floor
    min_accuracy: float | None = Field(None, ge=0, le=1)
    #: fraction of the fine-tune after which ``min_accuracy`` is checked
    check_at: float = Field(0.5, gt=0, lt=1)
    #: fraction of the steps over which the learning rate rises linearly from ~0 to ``lr``
    warmup: float = Field(0.1, ge=0, lt=1)
    #: the learning rate after the warm-up: ``constant``, or ``cosine`` (decays to 0)
    schedule: Literal["constant", "cosine"] = "cosine"
    #: BatchNorm during the fine-tune: ``train`` (batch statistics, running ones updated) or
    #: ``frozen`` (the running statistics used and kept; scale and shift still learn)
    bn: Literal["train", "frozen"] = "train"


class ConstraintsConfig(_Strict):
    """Limits a feasible candidate must meet; infeasible ones rank behind feasible ones."""

    max_accuracy_drop: float | None = Field(None, ge=0, le=1)
    max_params: int | None = Field(None, ge=1)
    max_size_mib: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)


class MeasureConfig(_Strict):
    """Where and how candidates are measured: the runtime's artifact, fixed threads, median
    of many runs."""

    batch_size: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    runs: int = Field(30, ge=30)
    warmup: int = Field(5, ge=1)
    #: where the candidates are deployed: both ``size_mib`` and ``latency_ms`` are of the
    #: artifact ``export`` writes for it (torch: state_dict, onnxruntime: onnx,
    #: onnxruntime-int8: onnx-int8, where blocks at <= 8 bits run int8 kernels)
    runtime: Literal["torch", "onnxruntime", "onnxruntime-int8"] = "torch"
    #: onnxruntime-int8: the integer types (searchcomp.config.int8); ``auto`` measures every
    #: scheme on this CPU when the study is prepared and keeps the fastest accurate one
    int8_scheme: Literal["auto", "u8s8", "u8s8-rr", "u8u8", "s8s8"] = "auto"
    #: the deployment target latency is timed on (independent of where training runs);
    #: ``cuda`` is timed with CUDA events after synchronising
    device: TargetDevice = "cpu"

    @model_validator(mode="after")
    def _runtime_device(self) -> MeasureConfig:
        if self.device != "cpu" and self.runtime != "torch":
            raise ValueError(f"runtime {self.runtime} is timed on the CPU here; "
                             f"device {self.device} needs runtime: torch")
        return self


class ProfileConfig(_Strict):
    """The sensitivity table (``searchcomp profile``): every single change, briefly recovered."""

    #: fine-tune steps each single-change candidate gets before it is scored (0 = none)
    steps: int = Field(24, ge=0)
    #: the recovery's seed (the same for every row, so rows differ only by their change);
    #: default: ``search.seed``
    seed: int | None = None


class SearchConfig(_Strict):
    """The search driver's settings (the command line may override them)."""

    trials: int = Field(50, ge=1)
    #: how candidates are scored: ``search`` (every one fully fine-tuned) or ``rungs``
    #: (multi-fidelity: most stop at a cheap rung, see :class:`RungsConfig`)
    strategy: Literal["search", "rungs"] = "search"
    rungs: RungsConfig = RungsConfig()
    #: stop starting candidates once this many full fine-tunes' worth of steps are spent
    budget: float | None = Field(None, gt=0)
    #: the one-minute baselines (every block at each allowed prune ratio, at each allowed
    #: bit width, every block separable, ...) evaluated at full fidelity before the search
    anchors: bool = True
    timeout_s: float | None = Field(None, gt=0)
    sampler: str = "nsga2"
    seed: int = 0
    #: Optuna storage URL; default ``sqlite:///<studies_dir>/<name>/study.db``
    storage: str | None = None
    #: NSGA-II/III population; default: trials // 4, between 4 and 50
    population_size: int | None = Field(None, ge=2)
    #: a running trial's heartbeat; a trial silent for 2x this is failed and run again
    heartbeat_s: int = Field(30, ge=1)
    #: uniform configurations tried first, e.g. ``{conv: separable}`` or ``{bits: 8}``
    seed_configs: tuple[dict[str, Any], ...] = ()

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; use one of {', '.join(SAMPLERS)}")
        return v

    @field_validator("seed_configs")
    @classmethod
    def _seeds(cls, v: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for cfg in v:
            if not isinstance(cfg, dict):
                raise ValueError("each seed config is a mapping, e.g. {conv: separable}")
            if "head" in cfg:
                BlocksConfig(head=[cfg["head"]])
            ChoiceSet(**{k: [x] for k, x in cfg.items() if k != "head"})  # the same form
        return v


class Space(_Strict):
    """A whole space file, validated. Build it with :func:`load_space`."""

    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")
    model: ModelConfig = ModelConfig()
    data: DataConfig
    base: BaseSourceConfig = BaseSourceConfig()
    blocks: BlocksConfig = BlocksConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    objectives: tuple[str, ...] = ("accuracy", "size_mib", "latency_ms")
    constraints: ConstraintsConfig = ConstraintsConfig()
    measure: MeasureConfig = MeasureConfig()
    search: SearchConfig = SearchConfig()
    #: where base training, fine-tunes, local fits, pruning and evaluation run
    device: Device = "auto"
    #: arithmetic of base training and fine-tunes (autocast): auto | fp32 | bf16 | fp16
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: arithmetic of the validation accuracy the search scores (fp32 keeps it comparable
    #: across runs and machines); ``train`` = the training precision
    eval_precision: Literal["fp32", "train"] = "fp32"
    #: NHWC memory layout while training: auto (on with bf16/fp16 on a CPU or GPU) | true | false
    channels_last: Literal["auto", True, False] = "auto"
    profile: ProfileConfig = ProfileConfig()
    #: overrides (``dotted.key: value``) that ``--quick`` applies
    quick: dict[str, Any] = Field(default_factory=dict)
    #: where studies and cached base models are written
    studies_dir: str = "studies"

    # Not fields: where the space came from, to point errors at lines.
    _file: str = ""
    _lines: dict[tuple, int] = {}
    _overridden: tuple[str, ...] = ()
    _args: tuple = ()

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto(cls, data: Any) -> Any:
        """Turn ``model.small_input: auto`` and ``data.normalize: auto`` into what they mean
        for this base, so the cache key, the export and ``load`` all see the real value."""
        if not isinstance(data, dict):
            return data
        model, dat, base = (data.get(k) or {} for k in ("model", "data", "base"))
        source = base.get("source", "train") if isinstance(base, dict) else "train"
        if not isinstance(model, dict) or not isinstance(source, str):
            return data  # the field validators say what is wrong
        small, size = model.get("small_input", "auto"), model.get("image_size", 32)
        if small is True and source == "pretrained":
            raise _field_error(("model", "small_input"), True,
                               "true would replace the pretrained stem by an untrained "
                               "stride-1 one (a ResNet's 7x7 filters cropped to 3x3); remove the "
                               "line (auto keeps the pretrained stem) or set base.source: train")
        if small == "auto" and isinstance(size, int):
            data = {**data, "model": {**model, "small_input": size <= SMALL_INPUT_MAX
                                      and source == "train"}}
        if isinstance(dat, dict) and dat and dat.get("normalize", "auto") == "auto":
            data = {**data, "data": {**dat, "normalize":
                                     "imagenet" if source == "pretrained" else "dataset"}}
        return data

    @model_validator(mode="after")
    def _normalize_channels(self) -> Space:
        stats = self.data.normalize
        c = self.model.in_channels
        if isinstance(stats, NormalizeStats) and len(stats.mean) not in (1, c):
            raise _field_error(("data", "normalize"), stats.model_dump(),
                               f"gives {len(stats.mean)} mean/std values for {c}-channel "
                               f"images; give {c} (or 1 for all channels)")
        return self

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one objective is needed")
        for o in v:
            if o not in OBJECTIVES:
                raise ValueError(f"unknown objective {o!r}; use any of {', '.join(OBJECTIVES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"objectives repeat: {list(v)}")
        return v

    @property
    def file(self) -> str:
        """The space file this came from."""
        return self._file

    @property
    def load_args(self) -> tuple[str, tuple[str, ...], bool]:
        """(file, --set overrides, quick) this space was loaded with, to load it elsewhere."""
        return self._args

    @property
    def directions(self) -> list[str]:
        """Optuna directions of the objectives, in order."""
        return [OBJECTIVES[o] for o in self.objectives]

    def line_of(self, field: str) -> int | None:
        """The line of ``field`` (dotted) in the file, or of its nearest present parent."""
        return line_of(self._lines, split_field(field))

    def error(self, field: str, message: str) -> SpaceError:
        """A SpaceError for ``field`` with the file and line filled in (raise it); a field
        that ``--set`` gave is blamed on ``--set``."""
        path = split_field(field)
        for key in self._overridden:
            k = split_field(key)
            if path[:len(k)] == k or k[:len(path)] == path:
                return SpaceError(message, file="--set", field=field)
        return SpaceError(message, file=self._file, field=field, line=self.line_of(field))

    def located(self, e: SearchcompError) -> SearchcompError:
        """``e`` with this file and the line of its field, when it names one."""
        if isinstance(e, SpaceError) or not e.field:
            return e
        msg = str(e)
        if msg.startswith(e.field + ": "):
            msg = msg[len(e.field) + 2:]
        return self.error(e.field, msg)

    def study_dir(self, study_name: str | None = None) -> Path:
        """Folder of a study of this space (default: the one named like the space): the
        trials' weights, reports."""
        return Path(self.studies_dir) / (study_name or self.name)

