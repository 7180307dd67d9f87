"""Dataset readers: the original file formats, read into memory as uint8 NCHW tensors.

The readers understand the original formats (CIFAR python pickles, MNIST idx.gz, image
folders), so a copy already on disk (Debian's ``dataset-fashion-mnist``, a manual download) is
used as is; torchvision's downloader fetches the archives when they are missing and we are
online.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from searchcomp.config import DataConfig
from searchcomp.errors import DataError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                b"labels", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85"),
}
_IDX = {
    "mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion_mnist": ("FashionMNIST",
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def default_root() -> Path:
    """Where datasets live unless the space says: $SEARCHCOMP_DATA or ~/.cache/searchcomp."""
    return Path(os.environ.get("SEARCHCOMP_DATA", Path.home() / ".cache" / "searchcomp" / "data"))


@dataclass
class Pools:
    """A dataset's full training and test images as uint8 NCHW, and integer labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None


def load_pools(data: DataConfig, in_channels: int) -> Pools:
    """The whole dataset in memory (these datasets are small enough)."""
    root = Path(data.root).expanduser() if data.root else default_root()
    if data.dataset in _CIFAR:
        return _load_cifar(data.dataset, root, data.download)
    if data.dataset in _IDX:
        return _load_idx(data.dataset, root, data.download, explicit=bool(data.root))
    if data.dataset == "digits":
        return _load_digits()
    return _load_folder(root, in_channels)


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


def _load_cifar(name: str, root: Path, download: bool) -> Pools:
    folder, train_files, test_file, label_key, url, md5 = _CIFAR[name]
    base = root / folder
    if not base.is_dir() and download:
        _download(lambda: _fetch_archive(url, root, md5), name, url, root, folder)
    if not base.is_dir():
        raise DataError(f"{name} not found: expected {base}/ (the extracted {Path(url).name}). "
                        f"Download {url} and extract it into {root}, or set data.root",
                        field="data.dataset")

    def read(fname: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = base / fname
        if not path.is_file():
            raise DataError(f"{name}: {path} is missing; re-extract {Path(url).name} into {root}")
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return torch.from_numpy(x.copy()), torch.tensor(d[label_key], dtype=torch.long)

    parts = [read(f) for f in train_files]
    test_x, test_y = read(test_file)
    return Pools(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                 test_x, test_y)


def _fetch_archive(url: str, root: Path, md5: str) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, str(root), md5=md5)


def _download(fetch, name: str, url: str, root: Path, folder: str) -> None:
    try:
        fetch()
    except Exception as e:  # any network or archive failure: explain where files go
        raise DataError(f"{name}: download from {url} failed ({e}). Offline? Put the files "
                        f"under {root / folder} (or set data.root), or data.download: false",
                        field="data.dataset") from None


# --- MNIST-format (idx.gz) --------------------------------------------------------------------


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


def _idx_dirs(name: str, root: Path, explicit: bool = True) -> list[Path]:
    folder, _ = _IDX[name]
    # MNIST and Fashion-MNIST files have the same names: a bare folder is only searched when
    # the user pointed data.root at it
    dirs = [root / folder / "raw", root / folder] + ([root] if explicit else [])
    if name == "fashion_mnist":
        dirs += [root / "fashion-mnist", DEBIAN_FASHION]
    return dirs


def _find_idx(name: str, root: Path, explicit: bool = True) -> Path | None:
    for d in _idx_dirs(name, root, explicit):
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in _IDX_FILES):
            return d
    return None


def _load_idx(name: str, root: Path, download: bool, explicit: bool) -> Pools:
    folder, mirror = _IDX[name]
    where = _find_idx(name, root, explicit)
    if where is None and download:
        target = root / folder / "raw"
        _download(lambda: _fetch_idx(mirror, target), name, mirror, root, f"{folder}/raw")
        where = _find_idx(name, root, explicit)
    if where is None:
        hint = " (or: apt-get install dataset-fashion-mnist)" if name == "fashion_mnist" else ""
        raise DataError(f"{name} not found: looked in "
                        f"{', '.join(map(str, _idx_dirs(name, root, explicit)))}"
                        f". Put {', '.join(f + '.gz' for f in _IDX_FILES)} in "
                        f"{root / folder / 'raw'}{hint}, or set data.root", field="data.dataset")

    def read(f: str) -> np.ndarray:
        p = where / f
        return read_idx(p if p.is_file() else where / f"{f}.gz")

    tx, ty, vx, vy = (read(f) for f in _IDX_FILES)
    return Pools(torch.from_numpy(tx.copy()).unsqueeze(1), torch.from_numpy(ty.astype(np.int64)),
                 torch.from_numpy(vx.copy()).unsqueeze(1), torch.from_numpy(vy.astype(np.int64)))


def _fetch_idx(mirror: str, target: Path) -> None:
    from torchvision.datasets.utils import download_url

    target.mkdir(parents=True, exist_ok=True)
    for f in _IDX_FILES:
        download_url(mirror + f + ".gz", str(target))


# --- scikit-learn digits and image folders ----------------------------------------------------


def _load_digits() -> Pools:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return Pools(torch.from_numpy(x), torch.from_numpy(d.target.astype(np.int64)), None, None)


def _load_folder(root: Path, in_channels: int) -> Pools:
    if not root.is_dir():
        raise DataError(f"image folder {root} not found", field="data.root")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
        if test_classes != classes:
            raise DataError(f"{root}/train and {root}/test must hold the same class folders; "
                            f"train has {classes}, test has {test_classes}", field="data.root")
        tx, ty = _read_folder(root / "train", classes, in_channels)
        vx, vy = _read_folder(root / "test", classes, in_channels)
        return Pools(tx, ty, vx, vy)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    x, y = _read_folder(root, classes, in_channels)
    return Pools(x, y, None, None)


_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _read_folder(root: Path, classes: list[str], in_channels: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    if not classes:
        raise DataError(f"{root} has no class subfolders (expected root/<class>/*.png)",
                        field="data.root")
    xs, ys = [], []
    size = None
    for label, cls in enumerate(classes):
        for p in sorted((root / cls).iterdir()):
            if p.suffix.lower() not in _IMAGE_EXT:
                continue
            try:
                img = Image.open(p).convert("L" if in_channels == 1 else "RGB")
            except OSError as e:
                raise DataError(f"cannot read image {p}: {e}", field="data.root") from None
            size = size or img.size
            if img.size != size:
                img = img.resize(size)
            a = np.asarray(img, dtype=np.uint8)
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"no images found under {root}", field="data.root")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.long)
