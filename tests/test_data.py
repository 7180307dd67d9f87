"""Datasets through torchvision on small files in the original formats; deterministic,
disjoint splits."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from searchcomp.config import DataConfig, ModelConfig
from searchcomp.data import load_splits, read_idx
from searchcomp.data import readers as data_mod
from searchcomp.errors import DataError


def _model(ch: int, size: int, classes: int = 10) -> ModelConfig:
    return ModelConfig(arch="resnet18", in_channels=ch, image_size=size, num_classes=classes)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                       for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _make_idx(folder: Path, n_train: int = 60, n_test: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    _write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)


def _make_cifar(root: Path, n_per_batch: int = 20) -> None:
    """CIFAR-10's python layout (torchvision reads the pickles with latin1: str keys)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {"data": rng.integers(0, 255, (n_per_batch, 3072), dtype=np.uint8),
             "labels": list(np.arange(n_per_batch) % 10)}
        with open(base / name, "wb") as f:
            pickle.dump(d, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


@pytest.fixture
def no_md5(monkeypatch):
    """Files the tests write cannot have the real archives' MD5 sums: check presence only."""
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity",
                        lambda fpath, md5=None: os.path.isfile(fpath))


def test_idx_reader_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert (read_idx(tmp_path / "a.gz") == arr).all()
    (tmp_path / "bad").write_bytes(b"nope")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_torchvision_layout(tmp_path):
    _make_idx(tmp_path / "FashionMNIST" / "raw")
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path), train_size=30, val_size=10,
                     test_size=20, batch_size=8, download=False)
    s = load_splits(cfg, _model(1, 32))
    assert (s.train.size, s.val.size, s.test.size) == (30, 10, 20)
    x, y = next(iter(s.train))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_splits_are_deterministic_and_disjoint(tmp_path):
    _make_idx(tmp_path / "MNIST" / "raw", n_train=60)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), train_size=40, val_size=15,
                     test_size=5, download=False)
    a, b = load_splits(cfg, _model(1, 28)), load_splits(cfg, _model(1, 28))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.x, b.val.x)
    train = {t.numpy().tobytes() for t in a.train.x}
    val = {t.numpy().tobytes() for t in a.val.x}
    assert not train & val
    other = load_splits(cfg.model_copy(update={"seed": 1}), _model(1, 28))
    assert not torch.equal(other.val.x, a.val.x)


def test_missing_dataset_says_where_to_put_files(tmp_path):
    cfg = DataConfig(dataset="mnist", root=str(tmp_path), download=False)
    with pytest.raises(DataError, match=r"MNIST.*raw"):
        load_splits(cfg, _model(1, 28))
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), download=False)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_splits(cfg, _model(3, 32))


def test_failed_download_explains(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), download=True)
    with pytest.raises(DataError, match="download from .* failed .*network is unreachable"):
        load_splits(cfg, _model(3, 32))


def test_cifar_download_path_extracts_and_reads(tmp_path, monkeypatch, no_md5):
    src = tmp_path / "src"
    _make_cifar(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    def fake_download(url, root, filename=None, md5=None, **kw):
        assert url.endswith("cifar-10-python.tar.gz")
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / (filename or Path(url).name)).write_bytes(archive.read_bytes())

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    root = tmp_path / "data"
    cfg = DataConfig(dataset="cifar10", root=str(root), train_size=50, val_size=20,
                     test_size=10, batch_size=16)
    s = load_splits(cfg, _model(3, 32))
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert s.train.x.shape == (50, 3, 32, 32) and s.test.size == 10


def test_mnist_download_path(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _make_idx(src)

    def fake_download(url, root, filename=None, md5=None, **kw):
        name = Path(url).name
        (Path(root) / name).write_bytes((src / name).read_bytes())

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    cfg = DataConfig(dataset="mnist", root=str(tmp_path / "d"), train_size=20, val_size=10,
                     test_size=5)
    s = load_splits(cfg, _model(1, 28))
    assert s.train.size == 20
    assert (tmp_path / "d" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()


def test_fashion_mnist_finds_debian_copy(tmp_path, monkeypatch):
    debian = tmp_path / "usr-share"
    _make_idx(debian)
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION", debian)
    cfg = DataConfig(dataset="fashion_mnist", root=str(tmp_path / "empty"), train_size=10,
                     val_size=5, test_size=5, download=False)
    assert load_splits(cfg, _model(1, 28)).train.size == 10


@pytest.mark.skipif(not data_mod.DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist absent")
def test_real_debian_fashion_mnist():
    cfg = DataConfig(dataset="fashion_mnist", root="/nonexistent", train_size=100, val_size=50,
                     test_size=50, download=False)
    s = load_splits(cfg, _model(1, 28))
    assert s.train.size == 100 and int(s.train.y.max()) <= 9


def test_digits_three_disjoint_subsets():
    cfg = DataConfig(dataset="digits", train_size=1000, val_size=300, test_size=400)
    s = load_splits(cfg, _model(1, 8))
    assert s.train.x.shape == (1000, 1, 8, 8)
    assert s.val.size + s.train.size + s.test.size == 1700
    with pytest.raises(DataError, match="exceed the 1797 images"):
        load_splits(cfg.model_copy(update={"train_size": 1500}), _model(1, 8))


def test_image_folder(tmp_path):
    from PIL import Image

    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((12, 12, 3), i * 20, np.uint8)).save(d / f"{i}.png")
    cfg = DataConfig(dataset="folder", root=str(tmp_path), train_size=8, val_size=4,
                     test_size=6, batch_size=4)
    s = load_splits(cfg, _model(3, 16, classes=2))
    assert s.train.x.shape == (8, 3, 16, 16) and s.test.size == 6


def test_shuffle_is_reproducible():
    cfg = DataConfig(dataset="digits", train_size=100, val_size=50, test_size=50, batch_size=10)
    a = load_splits(cfg, _model(1, 8))
    b = load_splits(cfg, _model(1, 8))
    ya = torch.cat([y for _, y in a.train])
    assert torch.equal(ya, torch.cat([y for _, y in b.train]))
    assert not torch.equal(ya, torch.cat([y for _, y in a.train]))  # next epoch, new order
