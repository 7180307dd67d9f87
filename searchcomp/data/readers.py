"""Datasets in: ``torchvision.datasets`` (CIFAR-10/100, MNIST, Fashion-MNIST, ``ImageFolder``),
scikit-learn's digits, or the user's own factory, each as a training and a test ``Dataset``.

A copy already on disk is used as is (Debian's ``dataset-fashion-mnist`` is read where it is
installed, gzipped); torchvision's downloaders fetch missing archives when we are online.
"""

from __future__ import annotations

import gzip
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST, ImageFolder, VisionDataset

from searchcomp.config import DataConfig
from searchcomp.config.factories import import_factory
from searchcomp.errors import DataError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_CIFAR = {"cifar10": (CIFAR10, "cifar-10-batches-py"), "cifar100": (CIFAR100, "cifar-100-python")}
_IDX = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def default_root() -> Path:
    """Where datasets live unless the space says: $SEARCHCOMP_DATA or ~/.cache/searchcomp."""
    return Path(os.environ.get("SEARCHCOMP_DATA", Path.home() / ".cache" / "searchcomp" / "data"))


@dataclass
class Pools:
    """A dataset's training and test images: ``Dataset``s of ``(image, label)``, the image
    a PIL image, an array or a tensor. ``test`` is None when the dataset has one pool (the
    test subset is then cut from ``train`` too)."""

    train: Dataset
    test: Dataset | None
    #: labels of every image when the dataset knows them without decoding (else None)
    train_targets: np.ndarray | None = None
    test_targets: np.ndarray | None = None


def load_pools(data: DataConfig) -> Pools:
    """Open the dataset of ``data`` (reading nothing more than torchvision itself does)."""
    root = Path(data.root).expanduser() if data.root else default_root()
    if ":" in data.dataset:
        return _from_factory(data, root)
    if data.dataset in _CIFAR:
        cls, folder = _CIFAR[data.dataset]
        return _pools(_cifar(cls, folder, root, data.download, True),
                      _cifar(cls, folder, root, data.download, False))
    if data.dataset in _IDX:
        where = _idx_folder(data.dataset, root, data.download, explicit=bool(data.root))
        cls = MnistFiles if data.dataset == "mnist" else FashionMnistFiles
        return _pools(cls(where, train=True), cls(where, train=False))
    if data.dataset == "digits":
        return _pools(Digits(), None)
    return _folder(root)


def _pools(train: Dataset, test: Dataset | None) -> Pools:
    return Pools(train, test, targets_of(train), None if test is None else targets_of(test))


def targets_of(ds: Dataset) -> np.ndarray | None:
    """The labels of ``ds`` if it lists them (torchvision datasets do), else None."""
    t = getattr(ds, "targets", None)
    if t is None:
        return None
    try:
        out = np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    return out if out.ndim == 1 and len(out) == len(ds) else None


def _download(fetch, name: str, url: str, root: Path) -> None:
    try:
        fetch()
    except Exception as e:  # any network or archive failure: explain where files go
        raise DataError(f"{name}: download from {url} failed ({e}). Offline? Put the files "
                        f"under {root} (or set data.root), or data.download: false",
                        field="data.dataset") from None


def check_source(data: DataConfig) -> None:
    """Refuse, before anything is read or downloaded, a data source that cannot work: an image
    folder that does not exist or holds no class folders, or a ``root`` that does not exist
    when nothing may be downloaded into it."""
    if data.dataset == "folder":
        root = Path(data.root or "").expanduser()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DataError(f"image folder {root} {what}", field="data.root")
        top = root / "train" if (root / "train").is_dir() else root
        if not any(p.is_dir() for p in top.iterdir()):
            raise DataError(f"{top} has no class subfolders (expected {top}/<class>/*.png)",
                            field="data.root")
    elif data.root and data.dataset != "digits" and not data.download:
        root = Path(data.root).expanduser()
        if not root.is_dir():
            raise DataError(f"{root} does not exist and data.download is false",
                            field="data.root")


# --- CIFAR ----------------------------------------------------------------------------------


def _cifar(cls: type[CIFAR10], folder: str, root: Path, download: bool, train: bool) -> CIFAR10:
    name = cls.__name__.lower()
    if not (root / folder).is_dir() and download:
        _download(lambda: cls(str(root), train=True, download=True), name, cls.url, root)
    if not (root / folder).is_dir():
        raise DataError(f"{name} not found: expected {root / folder}/ (the extracted "
                        f"{cls.filename}). Download {cls.url} and extract it into {root}, or set "
                        "data.root", field="data.dataset")
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError as e:
        raise DataError(f"{name} in {root / folder} cannot be read ({e}); extract "
                        f"{cls.filename} there again", field="data.dataset") from None


# --- MNIST-format (idx, gzipped or not) -------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped): the MNIST / Fashion-MNIST format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


class _IdxFiles:
    """torchvision's MNIST-format dataset read from any folder holding the four idx files,
    plain or gzipped (torchvision itself wants them unpacked under ``<root>/<Name>/raw``)."""

    def __init__(self, folder: Path, train: bool = True) -> None:
        VisionDataset.__init__(self, str(folder))
        self.train = train
        images, labels = _IDX_FILES[:2] if train else _IDX_FILES[2:]
        self.data = torch.from_numpy(read_idx(_idx_file(folder, images)).copy())
        self.targets = torch.from_numpy(read_idx(_idx_file(folder, labels)).astype(np.int64))


class MnistFiles(_IdxFiles, MNIST):
    """MNIST from a folder of idx files."""


class FashionMnistFiles(_IdxFiles, FashionMNIST):
    """Fashion-MNIST from a folder of idx files (e.g. /usr/share/datasets/fashion-mnist)."""


def _idx_file(folder: Path, name: str) -> Path:
    plain = folder / name
    return plain if plain.is_file() else folder / f"{name}.gz"


def _idx_dirs(name: str, root: Path, explicit: bool = True) -> list[Path]:
    folder = _IDX[name]
    # MNIST and Fashion-MNIST files have the same names: a bare folder is only searched when
    # the user pointed data.root at it
    dirs = [root / folder / "raw", root / folder] + ([root] if explicit else [])
    if name == "fashion_mnist":
        dirs += [root / "fashion-mnist", DEBIAN_FASHION]
    return dirs


def _find_idx(name: str, root: Path, explicit: bool) -> Path | None:
    for d in _idx_dirs(name, root, explicit):
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in _IDX_FILES):
            return d
    return None


def _idx_folder(name: str, root: Path, download: bool, explicit: bool) -> Path:
    where = _find_idx(name, root, explicit)
    cls = MNIST if name == "mnist" else FashionMNIST
    if where is None and download:
        _download(lambda: cls(str(root), train=True, download=True), name, cls.mirrors[0], root)
        where = _find_idx(name, root, explicit)
    if where is None:
        hint = " (or: apt-get install dataset-fashion-mnist)" if name == "fashion_mnist" else ""
        raise DataError(f"{name} not found: looked in "
                        f"{', '.join(map(str, _idx_dirs(name, root, explicit)))}"
                        f". Put {', '.join(f + '.gz' for f in _IDX_FILES)} in "
                        f"{root / _IDX[name] / 'raw'}{hint}, or set data.root",
                        field="data.dataset")
    return where


# --- scikit-learn digits, image folders, user factories -------------------------------------


class Digits(Dataset):
    """scikit-learn's bundled 8x8 digits (1,797 images) as uint8 1 x 8 x 8 tensors."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        self.data = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))
        self.targets = torch.from_numpy(d.target.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i].unsqueeze(0), int(self.targets[i])


def _folder(root: Path) -> Pools:
    if not root.is_dir():
        raise DataError(f"image folder {root} not found", field="data.root")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _image_folder(root / "train"), _image_folder(root / "test")
        if train.classes != test.classes:
            raise DataError(f"{root}/train and {root}/test must hold the same class folders; "
                            f"train has {train.classes}, test has {test.classes}",
                            field="data.root")
        return _pools(train, test)
    return _pools(_image_folder(root), None)


def _image_folder(root: Path) -> ImageFolder:
    try:
        return ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{root}: {e} (expected {root}/<class>/<image>)",
                        field="data.root") from None


def _from_factory(data: DataConfig, root: Path) -> Pools:
    fn = import_factory(data.dataset, "data.dataset")
    kwargs: dict[str, Any] = dict(data.kwargs)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "root" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs.setdefault("root", str(root))
    try:
        got = fn(**kwargs)
    except TypeError as e:
        raise DataError(f"{data.dataset} does not accept these arguments: {e}",
                        field="data.kwargs") from None
    if isinstance(got, dict):
        got = (got.get("train"), got.get("test"))
    train, test = got if isinstance(got, (tuple, list)) and len(got) == 2 else (got, None)
    for what, ds in (("train", train), ("test", test)):
        if ds is None and what == "test":
            continue
        if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise DataError(f"{data.dataset} must return (train, test) Datasets (test may be "
                            f"None); its {what} is a {type(ds).__name__}", field="data.dataset")
        if len(ds) == 0:
            raise DataError(f"{data.dataset}: the {what} Dataset is empty", field="data.dataset")
    return _pools(train, test)
