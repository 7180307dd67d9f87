"""What every image goes through (``torchvision.transforms.v2``): the model's channel count,
a resize that keeps the aspect ratio and a centre crop to ``image_size``, uint8 CHW; plus the
base's optional training augmentation and the per-channel normalisation statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from searchcomp.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, NormalizeStats
from searchcomp.errors import DataError


def field_error(field: str, message: str) -> DataError:
    """A DataError about ``field`` that also leads with it: a DataLoader worker re-raises an
    error from its text alone, and the field is read back from there."""
    return DataError(f"{field}: {message}", field=field)


class ToChannels:
    """An image (PIL, array or tensor) with ``channels`` channels: PIL images are converted
    by mode (palette, RGBA, ...), tensors and arrays by replicating gray or averaging RGB."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, img: Any) -> Any:
        if isinstance(img, Image.Image):
            if self.channels in (1, 3):
                return img.convert("L" if self.channels == 1 else "RGB")
            img = TF.pil_to_tensor(img)
        if isinstance(img, np.ndarray):
            img = TF.to_image(img)
        if not isinstance(img, torch.Tensor):
            raise field_error("data.dataset", f"a dataset item's image is a "
                              f"{type(img).__name__}; give a PIL image, an H x W (x C) array "
                              "or a C x H x W tensor")
        t = img.as_subclass(torch.Tensor)
        if t.ndim == 2:
            t = t.unsqueeze(0)
        c = t.shape[0]
        if c == self.channels:
            return t
        if c == 1:
            return t.expand(self.channels, *t.shape[1:])
        if c in (3, 4) and self.channels == 1:
            return TF.rgb_to_grayscale(t[:3])
        if c == 4 and self.channels == 3:
            return t[:3]
        raise field_error("model.in_channels", f"is {self.channels} but the dataset's images "
                          f"have {c} channels")


class ToUint8:
    """A uint8 C x H x W tensor; float images must be in [0, 1] (not yet normalised)."""

    def __call__(self, img: Any) -> torch.Tensor:
        t = TF.to_image(img).as_subclass(torch.Tensor)
        if t.is_floating_point():
            lo, hi = float(t.min()), float(t.max())
            if lo < -0.01 or hi > 1.01:
                raise field_error("data.dataset", f"a float image spans [{lo:.2f}, {hi:.2f}]; "
                                  "give images in [0, 1] (or uint8, or PIL): searchcomp "
                                  "normalises them itself (data.normalize)")
        return TF.to_dtype(t, torch.uint8, scale=True).contiguous()


def image_transform(size: int, channels: int) -> v2.Compose:
    """``channels`` channels, shorter side resized to ``size`` (aspect kept, antialiased),
    centre crop ``size`` x ``size``, uint8."""
    return v2.Compose([ToChannels(channels), v2.Resize(size, antialias=True),
                       v2.CenterCrop(size), ToUint8()])


def augmentation(names: Sequence[str], size: int) -> v2.Compose | None:
    """The base's training augmentation on uint8 images: ``crop`` = random ``size`` crop after
    zero-padding by ``size // 8`` (4 px at 32), ``flip`` = horizontal flip with p = 0.5."""
    steps: list[Any] = []
    if "crop" in names:
        steps.append(v2.RandomCrop(size, padding=max(1, size // 8)))
    if "flip" in names:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps) if steps else None


def fixed_stats(data: DataConfig, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel (mean, std) that do not depend on the images (``imagenet`` or explicit
    values), or None for ``dataset`` statistics (``auto`` outside a space means ``dataset``)."""
    norm = data.normalize
    if isinstance(norm, NormalizeStats):
        mean, std = torch.tensor(norm.mean), torch.tensor(norm.std)
    elif norm == "imagenet":
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if channels == 1:  # a gray image is R = G = B: the mean statistics of the three
            mean, std = mean.mean().view(1), std.mean().view(1)
    else:
        return None
    if len(mean) not in (1, channels):
        raise DataError(f"gives {len(mean)} mean/std values for {channels}-channel images",
                        field="data.normalize")
    return mean.expand(channels).clone().float(), std.expand(channels).clone().float()


def normalize_kind(data: DataConfig) -> str:
    """``dataset``, ``imagenet`` or ``explicit``: where the statistics came from."""
    norm = data.normalize
    return "explicit" if isinstance(norm, NormalizeStats) else \
        "dataset" if norm == "auto" else str(norm)
