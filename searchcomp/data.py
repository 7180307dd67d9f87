"""Datasets, read into memory once, and deterministic train / validation / test subsets.

The readers understand the original file formats (CIFAR python pickles, MNIST idx.gz), so a
copy that is already on disk (Debian's ``dataset-fashion-mnist``, a manual download) is used
as is; torchvision's downloader fetches the archives when they are missing and we are online.
Validation is carved out of the training set; the test split stays held out.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from searchcomp.errors import DataError
from searchcomp.space import DataConfig, ModelConfig

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


@dataclass
class Splits:
    """The three subsets a search uses, normalised lazily by :class:`Batches`."""

    train: Batches
    val: Batches
    test: Batches
    num_classes: int


class Batches:
    """Mini-batches of an in-memory uint8 subset, normalised per channel on the fly.

    Iterating yields ``(x float32, y int64)``; with ``shuffle`` the order is drawn from
    ``seed`` and the epoch number, so runs are reproducible.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, mean: torch.Tensor,
                 std: torch.Tensor, shuffle: bool = False, seed: int = 0) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.mean = mean.view(1, -1, 1, 1)
        self.std = std.view(1, -1, 1, 1)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def reseeded(self, seed: int) -> Batches:
        """The same images with their own shuffling seed (for one trial's fine-tune)."""
        return Batches(self.x, self.y, self.batch_size, self.mean.flatten(), self.std.flatten(),
                       shuffle=self.shuffle, seed=seed)

    @property
    def size(self) -> int:
        """Number of images."""
        return len(self.y)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 normalised with the training subset's statistics."""
        return (x.float() / 255.0 - self.mean) / self.std

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            self.epoch += 1
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.normalize(self.x[idx]), self.y[idx]


def load_splits(data: DataConfig, model: ModelConfig) -> Splits:
    """Read the dataset and cut the deterministic subsets the space asks for."""
    pools = load_pools(data, model.in_channels)
    n_classes = int(pools.train_y.max()) + 1
    if pools.test_y is not None:
        n_classes = max(n_classes, int(pools.test_y.max()) + 1)
    if n_classes > model.num_classes:
        raise DataError(f"is {model.num_classes} but {data.dataset} has {n_classes} classes",
                        field="model.num_classes")
    g = np.random.default_rng(data.seed)
    need = data.train_size + data.val_size
    if pools.test_x is None:  # one pool (digits, a folder without train/test): cut all three
        need += data.test_size
    if need > len(pools.train_y):
        sizes = "train_size + val_size" + (" + test_size" if pools.test_x is None else "")
        raise DataError(f"{sizes} = {need} exceed the {len(pools.train_y)} images of "
                        f"{data.dataset}", field="data.train_size")
    order = torch.from_numpy(g.permutation(len(pools.train_y)))
    val_idx = order[:data.val_size]
    train_idx = order[data.val_size:data.val_size + data.train_size]
    if pools.test_x is None:
        test_idx = order[data.val_size + data.train_size:need]
        test_x, test_y = pools.train_x[test_idx], pools.train_y[test_idx]
    else:
        if data.test_size > len(pools.test_y):
            raise DataError(f"{data.test_size} exceeds the {len(pools.test_y)} test images of "
                            f"{data.dataset}", field="data.test_size")
        t = torch.from_numpy(np.random.default_rng(data.seed + 1).permutation(len(pools.test_y)))
        test_idx = t[:data.test_size]
        test_x, test_y = pools.test_x[test_idx], pools.test_y[test_idx]
    size = model.image_size
    train_x = _resize(pools.train_x[train_idx], size)
    val_x = _resize(pools.train_x[val_idx], size)
    test_x = _resize(test_x, size)
    f = train_x.float() / 255.0
    mean = f.mean(dim=(0, 2, 3))
    std = f.std(dim=(0, 2, 3)).clamp_min(1e-3)
    bs = data.batch_size
    return Splits(
        train=Batches(train_x, pools.train_y[train_idx], bs, mean, std, shuffle=True,
                      seed=data.seed),
        val=Batches(val_x, pools.train_y[val_idx], bs, mean, std),
        test=Batches(test_x, test_y, bs, mean, std),
        num_classes=model.num_classes,
    )


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


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
