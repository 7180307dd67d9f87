"""Images streamed from their dataset by a ``DataLoader``: decoded in worker processes, batch
by batch, in an order chosen by the caller, never stacked whole."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from searchcomp.data.transforms import field_error
from searchcomp.errors import SearchcompError


def resolve_workers(workers: int | str) -> int:
    """``auto`` = one less than the CPUs this process may use, at most 4 (0 on one CPU)."""
    if workers != "auto":
        return int(workers)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus - 1))


class Subset(Dataset):
    """The images at ``indices`` of ``dataset`` as ``(uint8 C x H x W, int label)``, through
    ``transform`` (and ``augment``, if given); labels are checked against ``num_classes``."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, transform: Callable,
                 num_classes: int, augment: Callable | None = None) -> None:
        self.dataset, self.indices = dataset, indices
        self.transform, self.augment, self.num_classes = transform, augment, num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def with_augment(self, augment: Callable | None) -> Subset:
        """The same images, augmented by ``augment``."""
        return Subset(self.dataset, self.indices, self.transform, self.num_classes, augment)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        try:
            img, label = self.dataset[j]
        except SearchcompError:
            raise
        except Exception as e:  # a file that cannot be decoded, a broken user Dataset
            where = getattr(self.dataset, "samples", None)
            what = where[j][0] if where else f"item {j} of {type(self.dataset).__name__}"
            raise field_error("data.dataset", f"cannot read {what}: {type(e).__name__}: {e}") from None
        x = self.transform(img)
        if self.augment is not None:
            x = self.augment(x)
        try:
            y = int(label)
        except (TypeError, ValueError, RuntimeError):
            raise field_error("data.dataset", f"item {j}'s label is {label!r}; labels must be "
                              "class indices (an int)") from None
        if not 0 <= y < self.num_classes:
            raise field_error("model.num_classes", f"is {self.num_classes} but item {j} of the "
                         f"dataset has label {y}")
        return x.as_subclass(torch.Tensor), y


def _one_line(e: SearchcompError) -> SearchcompError:
    """``e`` as one line with its field, also when a DataLoader worker re-raised it (then
    the message is a traceback whose last line is the original error)."""
    lines = [s for s in str(e).splitlines() if s.strip()]
    last = lines[-1] if lines else str(e)
    name = type(e).__name__
    for prefix in (f"searchcomp.errors.{name}: ", f"{name}: "):
        last = last.removeprefix(prefix)
    field = e.field
    head, sep, rest = last.partition(": ")
    if field is None and sep and " " not in head and "." in head:
        field = head
    if field and last.startswith(field + ": "):
        last = last[len(field) + 2:]
    return type(e)(last, field=field)


def load_batches(subset: Subset, batches: Sequence[torch.Tensor], workers: int,
                 seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x uint8, y int64)`` for each index batch of ``batches`` (positions in ``subset``),
    in that order, decoded by ``workers`` processes (at most two batches ahead each).
    ``seed`` seeds the workers' random augmentation, so a run repeats exactly."""
    if not batches:
        return
    workers = min(workers, len(batches))
    loader = DataLoader(subset, batch_sampler=[b.tolist() for b in batches], num_workers=workers,
                        generator=torch.Generator().manual_seed(seed),
                        prefetch_factor=2 if workers else None)
    it = iter(loader)
    while True:
        try:
            x, y = next(it)
        except StopIteration:
            return
        except SearchcompError as e:  # from a worker, the traceback text is the message
            raise _one_line(e) from None
        yield x, y.long()


def materialize(subset: Subset, batch_size: int, workers: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image of ``subset`` once, in order: ``(x uint8 N x C x H x W, y int64)``."""
    n = len(subset)
    order = torch.arange(n)
    xs: torch.Tensor | None = None
    ys = torch.empty(n, dtype=torch.long)
    at = 0
    for x, y in load_batches(subset, list(order.split(batch_size)), workers):
        if xs is None:
            xs = torch.empty((n, *x.shape[1:]), dtype=torch.uint8)
        xs[at:at + len(y)] = x
        ys[at:at + len(y)] = y
        at += len(y)
    assert xs is not None
    return xs, ys
