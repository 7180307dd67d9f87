"""Your own images, as searchcomp imports them: ``examples.vgg.data:fashion_folder``.

A dataset factory returns the training and the test ``torch.utils.data.Dataset`` (the test
one may be None: the test subset is then cut from the training set). Items are
``(image, label)``; the image a PIL image, an array or a tensor in [0, 1], at any size:
searchcomp resizes (aspect kept), centre-crops and normalises it. searchcomp passes ``root``
(``data.root``, or its data cache) and ``data.kwargs``.

Here the "photos" are written once from Debian's Fashion-MNIST (``apt-get install
dataset-fashion-mnist``) into an ordinary image folder, ``<root>/fashion-folder/{train,test}/
<class>/*.png``, at mixed sizes and aspect ratios like real photos; then the folder is read
back with torchvision's ``ImageFolder``, as you would read yours.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "boot")


def fashion_folder(root: str, train_per_class: int = 600, test_per_class: int = 100):
    """``(ImageFolder(train), ImageFolder(test))`` of the folder, written first if missing."""
    folder = Path(root) / f"fashion-folder-{train_per_class}-{test_per_class}"
    if not folder.is_dir():
        _write_folder(folder, train_per_class, test_per_class)
    return ImageFolder(str(folder / "train")), ImageFolder(str(folder / "test"))


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def _write_folder(folder: Path, train_per_class: int, test_per_class: int) -> None:
    if not FASHION.is_dir():
        raise FileNotFoundError(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    rng = np.random.default_rng(0)
    try:
        for split, prefix, per_class in (("train", "train", train_per_class),
                                         ("test", "t10k", test_per_class)):
            images = _read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")
            labels = _read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
            for label, name in enumerate(CLASSES):
                (tmp / split / name).mkdir(parents=True)
                for i, j in enumerate(np.flatnonzero(labels == label)[:per_class]):
                    img = Image.fromarray(images[j])
                    # like photos: a margin on the sides (other aspect ratio), another size
                    margin = int(rng.integers(0, 9))
                    canvas = Image.new("L", (28 + 2 * margin, 28))
                    canvas.paste(img, (margin, 0))
                    scale = float(rng.uniform(1.0, 1.6))
                    canvas = canvas.resize((round(canvas.width * scale), round(28 * scale)))
                    canvas.save(tmp / split / name / f"{i:05d}.png")
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():  # not just another process writing it first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
