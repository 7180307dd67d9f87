"""Deterministic train / validation / test subsets, batched and normalised on the fly.

Validation is carved out of the training set; the test split stays held out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from searchcomp.config import DataConfig, ModelConfig
from searchcomp.data.readers import load_pools
from searchcomp.errors import DataError

#: subsets up to this many bytes are kept on the compute device whole
RESIDENT_BYTES = 2**30


@dataclass
class Splits:
    """The three subsets a search uses, normalised lazily by :class:`Batches`."""

    train: Batches
    val: Batches
    test: Batches
    num_classes: int

    def on(self, device: torch.device | str) -> Splits:
        """The same subsets, yielding batches on ``device``."""
        return Splits(self.train.on(device), self.val.on(device), self.test.on(device),
                      self.num_classes)


class Batches:
    """Mini-batches of an in-memory uint8 subset, normalised per channel on the fly.

    Iterating yields ``(x float32, y int64)`` on :attr:`device`; with ``shuffle`` the order is
    drawn from ``seed`` and the epoch number, so runs are reproducible (and the same on every
    device: the order is drawn on the CPU). :meth:`indexed` also yields each image's index in
    the subset, for per-image data such as cached teacher logits.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, mean: torch.Tensor,
                 std: torch.Tensor, shuffle: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        # small subsets live on the device (no copy per step); large ones move batch by batch
        home = self.device if x.numel() <= RESIDENT_BYTES else torch.device("cpu")
        self.x, self.y = x.to(home), y.to(home)
        self.batch_size = batch_size
        self.mean = mean.view(1, -1, 1, 1).to(self.device)
        self.std = std.view(1, -1, 1, 1).to(self.device)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def reseeded(self, seed: int) -> Batches:
        """The same images with their own shuffling seed (for one trial's fine-tune)."""
        return Batches(self.x, self.y, self.batch_size, self.mean.flatten(), self.std.flatten(),
                       shuffle=self.shuffle, seed=seed, device=self.device)

    def ordered(self) -> Batches:
        """The same images in their stored order, without shuffling."""
        return Batches(self.x, self.y, self.batch_size, self.mean.flatten(), self.std.flatten(),
                       shuffle=False, device=self.device)

    def on(self, device: torch.device | str) -> Batches:
        """The same images and order, yielded on ``device``."""
        out = Batches(self.x, self.y, self.batch_size, self.mean.flatten(), self.std.flatten(),
                      shuffle=self.shuffle, seed=self.seed, device=device)
        out.epoch = self.epoch
        return out

    @property
    def size(self) -> int:
        """Number of images."""
        return len(self.y)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 normalised with the training subset's statistics."""
        return (x.float() / 255.0 - self.mean) / self.std

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(index, x, y)`` batches: ``index`` (int64, CPU) holds each image's position in
        the subset. Advances the epoch like iterating does."""
        n = len(self.y)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            self.epoch += 1
        else:
            order = torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            at = idx.to(self.x.device)
            x = self.x[at].to(self.device, non_blocking=True)
            yield idx, self.normalize(x), self.y[at].to(self.device, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, x, y in self.indexed():
            yield x, y


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
