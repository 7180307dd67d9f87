"""The base network every candidate starts from: loaded, or trained here once and cached."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from searchcomp.compute import Compute
from searchcomp.config import Space
from searchcomp.config.factories import factory_digest
from searchcomp.data import Splits, augmentation
from searchcomp.models.factory import build_model, load_checkpoint
from searchcomp.train import DEFAULT_COMPUTE, evaluate, train_base

#: 2: torchvision datasets and transforms (aspect-kept resize), normalisation, augmentation
CACHE_FORMAT = 2


@dataclass
class Base:
    """A trained base model and where it came from."""

    model: nn.Module
    source: str
    val_accuracy: float
    #: the cached weights file, or the checkpoint it was loaded from (None if downloaded only)
    path: Path | None
    cached: bool = False
    #: the per-channel input statistics it was trained or evaluated with
    normalize: dict | None = None


def cache_key(space: Space) -> str:
    """Hash of everything that determines a trained base: the model (and a factory's source
    file), the training data subsets and their normalisation (and a dataset factory's source
    file), the training settings and the library versions. The test subset, how images are
    loaded (workers, in memory), fine-tune and search settings do not change the base and are
    left out."""
    import torchvision

    from searchcomp import __version__

    data = space.data.model_dump(exclude={"test_size", "download", "workers", "in_memory"})
    blob = json.dumps({"format": CACHE_FORMAT, "model": space.model.model_dump(), "data": data,
                       "base": space.base.model_dump(),
                       "factory": factory_digest(space.model.arch),
                       "data_factory": factory_digest(space.data.dataset),
                       "torch": torch.__version__.split("+")[0],
                       "torchvision": torchvision.__version__.split("+")[0],
                       "searchcomp": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(space: Space) -> Path:
    """Where the trained base of ``space`` is cached."""
    return Path(space.studies_dir) / "_base" / f"{space.model.arch.replace(':', '_')}-" \
        f"{cache_key(space)}.pt"


def obtain_base(space: Space, splits: Splits, progress: bool = True,
                log=print, compute: Compute | None = None) -> Base:
    """Load or train the base network of ``space`` on ``compute`` (its device and training
    precision), reusing the cache when it matches. The model is returned on that device.

    The cache key leaves out the device and the precision: a base trained on a GPU in bf16
    serves a CPU run of the same space, and the other way round."""
    compute = compute or DEFAULT_COMPUTE
    with torch.random.fork_rng():
        torch.manual_seed(space.data.seed)
        base = _obtain(space, splits, progress, log, compute)
    base.normalize = normalization(splits)
    return base


def normalization(splits: Splits) -> dict:
    """The input statistics of ``splits``: ``{"kind", "mean", "std"}`` (kind: dataset,
    imagenet or explicit), as stored with the base and in every export."""
    return {"kind": splits.normalize, "mean": splits.train.mean.flatten().tolist(),
            "std": splits.train.std.flatten().tolist()}


def _obtain(space: Space, splits: Splits, progress: bool, log, compute: Compute) -> Base:
    src = space.base
    dev = compute.device
    if src.source == "checkpoint":
        model = build_model(space.model)
        load_checkpoint(model, src.path)
        model.to(dev).eval()
        acc = evaluate(model, splits.val, compute)
        log(f"base: loaded {src.path}, validation accuracy {acc:.4f}")
        return Base(model, "checkpoint", acc, Path(src.path))

    path = cache_path(space)
    if src.source == "pretrained" and src.epochs == 0:
        model = build_model(space.model, pretrained=True).to(dev).eval()
        acc = evaluate(model, splits.val, compute)
        log(f"base: torchvision pretrained {space.model.arch}, validation accuracy {acc:.4f}")
        return Base(model, "pretrained", acc, None)

    if path.is_file() and path.with_suffix(".json").is_file():
        model = build_model(space.model)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.to(dev).eval()
        meta = json.loads(path.with_suffix(".json").read_text())
        log(f"base: reusing cached {path} (validation accuracy {meta['val_accuracy']:.4f})")
        return Base(model, src.source, float(meta["val_accuracy"]), path, cached=True)

    model = build_model(space.model, pretrained=src.source == "pretrained")
    aug = augmentation(src.augment, space.model.image_size)
    with_aug = f", augmented ({', '.join(src.augment)})" if aug else ""
    log(f"base: training {space.model.arch} for {src.epochs} epoch(s) on "
        f"{splits.train.size} {space.data.dataset} images{with_aug} (cached afterwards in "
        f"{path})")
    t0 = time.perf_counter()
    train_base(model, splits.train.augmented(aug), src.epochs, src.lr, src.momentum,
               src.weight_decay, progress=progress, compute=compute, desc="base",
               log=log)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, splits.val, compute)
    log(f"base: validation accuracy {acc:.4f} after {seconds:.0f} s")
    _save_atomic(model, path, {"val_accuracy": acc, "train_seconds": seconds,
                               "trained_on": compute.describe(),
                               "key": cache_key(space), "space": space.file,
                               "normalize": normalization(splits),
                               "model": space.model.model_dump(), "data": space.data.model_dump(),
                               "base": space.base.model_dump()})
    return Base(model, src.source, acc, path)


def state_digest(model: nn.Module) -> str:
    """A short hash of ``model``'s state (names, shapes, dtypes, values): tells whether two
    runs start from the same base, e.g. to reuse its measurement or its teacher logits."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                     else t.numpy().tobytes())
    return h.hexdigest()[:16]


def _save_atomic(model: nn.Module, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, path)
