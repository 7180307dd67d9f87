"""The inputs of a search in the space file: the network (``model``), the images (``data``)
and where the trained base comes from (``base``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from searchcomp.config.base import FACTORY as _FACTORY
from searchcomp.config.base import Strict as _Strict

DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "digits", "folder")
#: channel count of each built-in dataset, to catch a model that cannot read it
DATASET_CHANNELS = {"cifar10": 3, "cifar100": 3, "mnist": 1, "fashion_mnist": 1, "digits": 1}
#: ``small_input: auto`` gives a stride-1 stem up to this image size
SMALL_INPUT_MAX = 64


class ModelConfig(_Strict):
    """The network: a torchvision architecture by name or a user factory ``pkg.mod:fn``."""

    arch: str = "resnet50"
    num_classes: int = Field(10, ge=2)
    in_channels: int = Field(3, ge=1)
    image_size: int = Field(32, ge=8, le=1024)
    #: stride-1 stem (ResNets: 3x3, no max-pool), as networks on CIFAR use; ``auto`` (resolved
    #: by :class:`Space`) = true for image_size <= 64 when the base is trained here
    small_input: bool | Literal["auto"] = "auto"
    #: extra keyword arguments for a factory (or the torchvision constructor)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        # a torchvision name is checked when the model is built (that needs torchvision)
        if ":" in v and not _FACTORY.match(v):
            raise ValueError(f"factory {v!r} must look like 'package.module:function'")
        return v


#: per-channel statistics of ImageNet, which torchvision's pretrained weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("auto", "dataset", "imagenet")


class NormalizeStats(_Strict):
    """Explicit per-channel statistics (of images scaled to [0, 1])."""

    mean: tuple[float, ...] = Field(min_length=1)
    std: tuple[float, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> NormalizeStats:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {list(self.std)}")
        return self


class DataConfig(_Strict):
    """Which images, and the deterministic train / validation / test subsets drawn from them."""

    #: a built-in dataset (:data:`DATASETS`), or a factory ``pkg.mod:fn`` returning the train
    #: and test ``torch.utils.data.Dataset``s
    dataset: str
    #: where the files are (or are downloaded to); for ``folder``, the image folder itself;
    #: handed to a dataset factory that takes ``root``
    root: str | None = None
    #: keyword arguments for a dataset factory
    kwargs: dict[str, Any] = Field(default_factory=dict)
    train_size: int = Field(5000, ge=1)
    val_size: int = Field(1000, ge=1)
    test_size: int = Field(2000, ge=1)
    batch_size: int = Field(128, ge=1)
    seed: int = 0
    #: fetch torchvision-format archives when they are missing (needs internet)
    download: bool = True
    #: per-channel normalisation: ``auto`` (ImageNet statistics for a pretrained base, else
    #: ``dataset``), ``dataset`` (of the training subset), ``imagenet``, or {mean, std}
    normalize: Literal["auto", "dataset", "imagenet"] | NormalizeStats = "auto"
    #: decode the subsets once and keep them in memory (``auto``: when they fit in
    #: :data:`MEMORY_LIMIT_MIB`), or stream them from the dataset every epoch
    in_memory: bool | Literal["auto"] = "auto"
    #: DataLoader worker processes that decode streamed images; ``auto`` = CPUs - 1, at most 4
    workers: int | Literal["auto"] = Field("auto")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if ":" in v:
            if not _FACTORY.match(v):
                raise ValueError(f"dataset factory {v!r} must look like 'package.module:function'")
        elif v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; use one of {', '.join(DATASETS)}, or a "
                             "factory 'package.module:function' returning train and test Datasets")
        return v

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize(cls, v: Any) -> Any:
        if isinstance(v, dict):
            try:
                return NormalizeStats.model_validate(v)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(map(str, err["loc"]))
                msg = err["msg"].removeprefix("Value error, ")
                raise ValueError(f"{where}: {msg}" if where else msg) from None
        if v not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {v!r}; use auto, dataset, imagenet or "
                             "{mean: [...], std: [...]} (of images scaled to [0, 1])")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"workers must be >= 0 (0 = decode in the main process), got {v}")
        return v

    @model_validator(mode="after")
    def _root(self) -> DataConfig:
        if self.dataset == "folder" and not self.root:
            raise ValueError("dataset 'folder' needs 'root': the image folder path")
        if self.kwargs and ":" not in self.dataset:
            raise ValueError("kwargs are passed to a dataset factory 'package.module:function'; "
                             f"{self.dataset!r} takes none")
        return self


class BaseSourceConfig(_Strict):
    """Where the trained base network comes from."""

    source: Literal["train", "pretrained", "checkpoint"] = "train"
    #: checkpoint file (a state_dict, or a dict holding one under 'state_dict' or 'model')
    path: str | None = None
    #: epochs of training here (``train``), or of transfer fine-tuning after ``pretrained``
    epochs: int = Field(5, ge=0)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    #: training augmentation of the base: ``crop`` (random crop after padding by 1/8 of the
    #: side) and ``flip`` (horizontal), the standard CIFAR recipe; the fine-tunes see none
    augment: tuple[Literal["crop", "flip"], ...] = ()

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("augment")
    @classmethod
    def _augment_once(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"values repeat: {list(v)}")
        return v

    @model_validator(mode="after")
    def _path(self) -> BaseSourceConfig:
        if self.source == "checkpoint" and not self.path:
            raise ValueError("source 'checkpoint' needs 'path': the checkpoint file")
        if self.source == "train" and self.epochs < 1:
            raise ValueError("source 'train' needs epochs >= 1")
        return self
