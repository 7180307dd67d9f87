"""Deterministic train / validation / test subsets, batched and normalised on the fly.

Validation is carved out of the training set; the test split stays held out. Small subsets
are decoded once and kept in memory as uint8; larger ones are streamed from the dataset by a
``DataLoader`` every epoch (``data.in_memory``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from searchcomp.config import DataConfig, ModelConfig
from searchcomp.data.readers import load_pools
from searchcomp.data.stream import Subset, load_batches, materialize, resolve_workers
from searchcomp.data.transforms import fixed_stats, image_transform, normalize_kind
from searchcomp.errors import DataError

#: ``in_memory: auto`` keeps the three subsets in memory up to this many MiB of uint8 images
MEMORY_LIMIT_MIB = 1024
#: streamed training subsets: dataset statistics come from this many of their images
STATS_IMAGES = 2000
#: in-memory subsets up to this many bytes are kept on the compute device whole
RESIDENT_BYTES = 2**30


@dataclass
class Splits:
    """The three subsets a search uses, normalised lazily by :class:`Batches`."""

    train: Batches
    val: Batches
    test: Batches
    num_classes: int
    #: where :attr:`Batches.mean` / ``std`` came from: ``dataset``, ``imagenet`` or ``explicit``
    normalize: str = "dataset"

    def on(self, device: torch.device | str) -> Splits:
        """The same subsets, yielding batches on ``device``."""
        return Splits(self.train.on(device), self.val.on(device), self.test.on(device),
                      self.num_classes, self.normalize)


class Batches:
    """Mini-batches ``(x float32 normalised, y int64)`` of one subset, yielded on
    :attr:`device`.

    The images are either in memory (``x``: uint8 N x C x H x W, ``y``; small subsets live on
    the device whole, larger ones move batch by batch), or streamed from their dataset
    (``stream``), decoded by DataLoader workers a few batches ahead and never stacked whole.
    With ``shuffle`` the order is drawn from ``seed`` and the epoch number, the same way in
    both cases and on every device (the order is drawn on the CPU), so runs are reproducible.
    ``augment`` (the base's training augmentation, see :meth:`augmented`) is applied to each
    uint8 image. :meth:`indexed` also yields each image's index in the subset, for per-image
    data such as cached teacher logits.
    """

    def __init__(self, x: torch.Tensor | None, y: torch.Tensor | None, batch_size: int,
                 mean: torch.Tensor, std: torch.Tensor, shuffle: bool = False, seed: int = 0,
                 *, stream: Subset | None = None, workers: int = 0,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | str = "cpu") -> None:
        if (x is None) == (stream is None):
            raise ValueError("give either images x (in memory) or a stream")
        self.device = torch.device(device)
        if x is not None:
            # small subsets live on the device (no copy per step); large ones move per batch
            home = self.device if x.numel() <= RESIDENT_BYTES else torch.device("cpu")
            x, y = x.to(home), y.to(home)
        self.x, self.y, self.stream, self.workers = x, y, stream, workers
        self.batch_size = batch_size
        self.mean = mean.view(1, -1, 1, 1).to(self.device)
        self.std = std.view(1, -1, 1, 1).to(self.device)
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.epoch = 0

    def _like(self, **changes) -> Batches:
        args = {"shuffle": self.shuffle, "seed": self.seed, "augment": self.augment,
                "device": self.device, **changes}
        return Batches(self.x, self.y, self.batch_size, self.mean.flatten(), self.std.flatten(),
                       args["shuffle"], args["seed"], stream=self.stream, workers=self.workers,
                       augment=args["augment"], device=args["device"])

    def __len__(self) -> int:
        return (self.size + self.batch_size - 1) // self.batch_size

    def reseeded(self, seed: int) -> Batches:
        """The same images with their own shuffling seed (for one trial's fine-tune)."""
        return self._like(seed=seed)

    def ordered(self) -> Batches:
        """The same images in their stored order, without shuffling."""
        return self._like(shuffle=False)

    def augmented(self, augment: Callable[[torch.Tensor], torch.Tensor] | None) -> Batches:
        """The same images and order, each uint8 image passed through ``augment`` first."""
        return self._like(augment=augment)

    def on(self, device: torch.device | str) -> Batches:
        """The same images and order, yielded on ``device``."""
        out = self._like(device=device)
        out.epoch = self.epoch
        return out

    @property
    def size(self) -> int:
        """Number of images."""
        return len(self.x) if self.x is not None else len(self.stream)

    @property
    def streamed(self) -> bool:
        """True when the images are decoded from the dataset every epoch."""
        return self.stream is not None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 normalised with the subsets' per-channel statistics."""
        return (x.float() / 255.0 - self.mean) / self.std

    def order(self) -> torch.Tensor:
        """The positions of the next epoch, in order (and advance the epoch if shuffling)."""
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        return torch.randperm(self.size, generator=g)

    def indexed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(index, x, y)`` batches: ``index`` (int64, CPU) holds each image's position in
        the subset. Advances the epoch like iterating does."""
        order = self.order()
        batches = list(order.split(self.batch_size))
        dev = self.device
        if self.stream is not None:
            seed = self.seed * 100_003 + self.epoch
            stream = self.stream.with_augment(self.augment)
            for idx, (x, y) in zip(batches, load_batches(stream, batches, self.workers, seed),
                                   strict=True):
                yield (idx, self.normalize(x.to(dev, non_blocking=True)),
                       y.to(dev, non_blocking=True))
            return
        for idx in batches:
            x = self.x[idx.to(self.x.device)]
            if self.augment is not None:
                x = torch.stack([self.augment(img) for img in x.cpu()])
            yield (idx, self.normalize(x.to(dev, non_blocking=True)),
                   self.y[idx.to(self.y.device)].to(dev, non_blocking=True))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, x, y in self.indexed():
            yield x, y


def load_splits(data: DataConfig, model: ModelConfig) -> Splits:
    """Open the dataset and cut the deterministic subsets the space asks for."""
    pools = load_pools(data)
    _check_labels(pools.train_targets, pools.test_targets, data, model)
    n_train = len(pools.train)
    g = np.random.default_rng(data.seed)
    need = data.train_size + data.val_size
    if pools.test is None:  # one pool (digits, a folder without train/test): cut all three
        need += data.test_size
    if need > n_train:
        sizes = "train_size + val_size" + (" + test_size" if pools.test is None else "")
        raise DataError(f"{sizes} = {need} exceed the {n_train} images of "
                        f"{data.dataset}", field="data.train_size")
    order = torch.from_numpy(g.permutation(n_train))
    val_idx = order[:data.val_size]
    train_idx = order[data.val_size:data.val_size + data.train_size]
    if pools.test is None:
        test_pool, test_idx = pools.train, order[data.val_size + data.train_size:need]
    else:
        if data.test_size > len(pools.test):
            raise DataError(f"{data.test_size} exceeds the {len(pools.test)} test images of "
                            f"{data.dataset}", field="data.test_size")
        t = torch.from_numpy(np.random.default_rng(data.seed + 1).permutation(len(pools.test)))
        test_pool, test_idx = pools.test, t[:data.test_size]

    c, size = model.in_channels, model.image_size
    transform = image_transform(size, c)
    subsets = [Subset(pools.train, train_idx, transform, model.num_classes),
               Subset(pools.train, val_idx, transform, model.num_classes),
               Subset(test_pool, test_idx, transform, model.num_classes)]
    workers = resolve_workers(data.workers)
    in_memory = data.in_memory
    if in_memory == "auto":
        in_memory = need_mib(data, model) <= MEMORY_LIMIT_MIB
    if in_memory:
        loaded = [materialize(s, max(data.batch_size, 256), workers) for s in subsets]
        stats = fixed_stats(data, c) or _stats(loaded[0][0])
        train, val, test = (Batches(x, y, data.batch_size, *stats) for x, y in loaded)
    else:
        stats = fixed_stats(data, c) or _stats_streamed(subsets[0], data.batch_size, workers)
        train, val, test = (Batches(None, None, data.batch_size, *stats, stream=s,
                                    workers=workers) for s in subsets)
    train.shuffle, train.seed = True, data.seed
    return Splits(train, val, test, model.num_classes, normalize_kind(data))


def need_mib(data: DataConfig, model: ModelConfig) -> float:
    """MiB of uint8 images the three subsets hold (what ``in_memory`` keeps)."""
    n = data.train_size + data.val_size + data.test_size
    return n * model.in_channels * model.image_size ** 2 / 2**20


def _check_labels(train: np.ndarray | None, test: np.ndarray | None, data: DataConfig,
                  model: ModelConfig) -> None:
    """Labels a dataset lists must fit the model (others are checked as they are read)."""
    known = [t for t in (train, test) if t is not None and len(t)]
    if not known:
        return
    n_classes = max(int(t.max()) for t in known) + 1
    if n_classes > model.num_classes:
        raise DataError(f"is {model.num_classes} but {data.dataset} has {n_classes} classes",
                        field="model.num_classes")
    if min(int(t.min()) for t in known) < 0:
        raise DataError(f"{data.dataset} has negative labels", field="data.dataset")


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]."""
    f = x.float() / 255.0
    return f.mean(dim=(0, 2, 3)), f.std(dim=(0, 2, 3)).clamp_min(1e-3)


def _stats_streamed(subset: Subset, batch_size: int, workers: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over the first :data:`STATS_IMAGES` images of ``subset``,
    accumulated batch by batch (float64 sums)."""
    n = min(len(subset), STATS_IMAGES)
    total = sq = None
    count = 0
    for x, _ in load_batches(subset, list(torch.arange(n).split(batch_size)), workers):
        f = x.double() / 255.0
        s, s2 = f.sum(dim=(0, 2, 3)), (f * f).sum(dim=(0, 2, 3))
        total, sq = (s, s2) if total is None else (total + s, sq + s2)
        count += f.numel() // f.shape[1]
    mean = total / count
    var = (sq / count - mean * mean) * count / max(count - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-3)
