"""Images through torchvision: folders streamed by a DataLoader, aspect-kept resize and centre
crop, normalisation, the base's augmentation, and user dataset factories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from searchcomp.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, ModelConfig
from searchcomp.data import augmentation, load_splits
from searchcomp.errors import DataError


def _model(ch: int, size: int, classes: int = 3) -> ModelConfig:
    return ModelConfig(arch="resnet18", in_channels=ch, image_size=size, num_classes=classes)


def _three_stripes(w: int, h: int) -> Image.Image:
    """Left third red, middle third green, right third blue (or the same top to bottom when
    taller than wide)."""
    a = np.zeros((h, w, 3), np.uint8)
    if w >= h:
        for i, col in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
            a[:, i * w // 3:(i + 1) * w // 3] = col
    else:
        for i, col in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255))):
            a[i * h // 3:(i + 1) * h // 3] = col
    return Image.fromarray(a)


def _mixed_folder(root, n_per_class: int = 8):
    """root/{train,test}/<class>/ with images of mixed sizes, aspect ratios and modes."""
    sizes = [(60, 20), (20, 60), (33, 11), (40, 40), (90, 30), (16, 48), (24, 24), (75, 25)]
    for split in ("train", "test"):
        for k, cls in enumerate(("a", "b", "c")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n_per_class):
                img = _three_stripes(*sizes[(i + k) % len(sizes)])
                if i % 3 == 1:
                    img = img.convert("L")
                elif i % 3 == 2:
                    img = img.convert("P")
                img.save(d / f"{i}.png")


def test_folder_streams_with_bounded_memory_aspect_kept(tmp_path, monkeypatch):
    _mixed_folder(tmp_path)
    import torchvision.datasets.folder as tv_folder

    opened = []
    real = tv_folder.pil_loader
    monkeypatch.setattr(tv_folder, "pil_loader", lambda p: opened.append(p) or real(p))
    cfg = DataConfig(dataset="folder", root=str(tmp_path), train_size=18, val_size=6,
                     test_size=9, batch_size=4, in_memory=False, workers=0)
    s = load_splits(cfg, _model(3, 12))
    assert s.train.streamed and s.train.x is None  # never stacked
    stats_reads = len(opened)
    assert stats_reads == 18  # the dataset statistics read the training subset once
    seen = 0
    for x, y in s.train:
        seen += len(y)
        assert x.shape == (len(y), 3, 12, 12) and x.dtype == torch.float32
        assert y.dtype == torch.int64
        # the loader decodes a batch when it is asked for it, not the whole set up front
        assert len(opened) - stats_reads == seen
    assert seen == 18 and len(s.train) == 5
    # resize keeps the aspect ratio and the centre crop keeps the middle: every stripe image,
    # wide or tall, comes out all green (a stretched one would show red and blue edges)
    raw = next(iter(s.test))[0] * s.test.std + s.test.mean
    rgb = raw.permute(0, 2, 3, 1)
    colour = rgb.mean(dim=(1, 2))
    gray = (colour.max(1).values - colour.min(1).values) < 0.05
    green = ~gray
    assert green.any()
    assert (colour[green].argmax(1) == 1).all()
    # no red, no blue at the edges (antialiasing may bleed a little; a stretched image: 1.0)
    g = rgb[green]
    borders = torch.cat([g[:, 0], g[:, -1], g[:, :, 0], g[:, :, -1]], dim=1)
    assert (borders[..., [0, 2]] < 0.3).all()


def test_streamed_equals_in_memory_and_workers_do_not_matter(tmp_path):
    _mixed_folder(tmp_path)
    base = dict(dataset="folder", root=str(tmp_path), train_size=18, val_size=6, test_size=9,
                batch_size=5, seed=3)
    mem = load_splits(DataConfig(**base, in_memory=True), _model(1, 10))
    streamed = load_splits(DataConfig(**base, in_memory=False, workers=0), _model(1, 10))
    two = load_splits(DataConfig(**base, in_memory=False, workers=2), _model(1, 10))
    assert mem.train.x is not None and not mem.train.streamed
    for a, b, c in zip(mem.train.reseeded(7).indexed(), streamed.train.reseeded(7).indexed(),
                       two.train.reseeded(7).indexed(), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])  # the same order
        assert torch.equal(a[2], b[2]) and torch.equal(b[2], c[2])
        assert torch.allclose(b[1], c[1])
    assert torch.allclose(mem.val.mean, streamed.val.mean, atol=1e-6)  # the same statistics


def test_normalize_imagenet_and_explicit():
    base = dict(dataset="digits", train_size=100, val_size=50, test_size=50, batch_size=10)
    plain = load_splits(DataConfig(**base), _model(1, 8, 10))
    x0 = next(iter(plain.val))[0] * plain.val.std + plain.val.mean  # back to [0, 1]
    s = load_splits(DataConfig(**base, normalize="imagenet"), _model(1, 8, 10))
    mean, std = np.mean(IMAGENET_MEAN), np.mean(IMAGENET_STD)  # gray = the three averaged
    assert s.normalize == "imagenet"
    assert torch.allclose(s.train.mean.flatten(), torch.tensor([mean], dtype=torch.float32))
    x = next(iter(s.val))[0]
    assert torch.allclose(x, (x0 - mean) / std, atol=1e-5)
    rgb = load_splits(DataConfig(**base, normalize="imagenet"), _model(3, 8, 10))
    assert torch.allclose(rgb.train.std.flatten(), torch.tensor(IMAGENET_STD))
    e = load_splits(DataConfig(**base, normalize={"mean": [0.5], "std": [0.25]}),
                    _model(3, 8, 10))
    assert e.normalize == "explicit" and e.train.mean.flatten().tolist() == [0.5] * 3


def test_augmentation_changes_images_not_labels_and_repeats():
    cfg = DataConfig(dataset="digits", train_size=64, val_size=10, test_size=10, batch_size=16)
    s = load_splits(cfg, _model(1, 8, 10))
    aug = augmentation(["crop", "flip"], 8)
    assert augmentation([], 8) is None

    def run(seed):
        torch.manual_seed(seed)
        return list(s.train.reseeded(1).augmented(aug))

    plain = list(s.train.reseeded(1))
    a, b = run(0), run(0)
    assert all(torch.equal(p[1], q[1]) for p, q in zip(plain, a, strict=True))  # same order
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(plain, a, strict=True))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))  # reproducible


def test_user_dataset_factory(tmp_path):
    from tests import tiny_factory

    cfg = DataConfig(dataset="tests.tiny_factory:blobs", root=str(tmp_path), kwargs={"n_train": 40},
                     train_size=20, val_size=10, test_size=10, batch_size=8)
    s = load_splits(cfg, _model(1, 8, 4))
    assert tiny_factory.blobs.root == str(tmp_path)
    assert s.test.size == 10 and s.train.x.shape == (20, 1, 8, 8)
    bad = cfg.model_copy(update={"kwargs": {"scale": 3.0}})
    with pytest.raises(DataError, match=r"spans \[0.00, 3.00\].*\[0, 1\]"):
        load_splits(bad, _model(1, 8, 4))
    with pytest.raises(DataError, match="must return .*train, test"):
        load_splits(cfg.model_copy(update={"dataset": "tests.tiny_factory:not_datasets",
                                           "kwargs": {}}), _model(1, 8, 4))


@pytest.mark.parametrize("workers", [0, 1])
def test_label_beyond_num_classes_is_one_line_naming_the_field(tmp_path, workers):
    cfg = DataConfig(dataset="tests.tiny_factory:blobs", root=str(tmp_path),
                     kwargs={"classes": 4}, train_size=20, val_size=10, test_size=10,
                     batch_size=8, in_memory=False, workers=workers)
    with pytest.raises(DataError) as e:  # the statistics pass reads labels first
        load_splits(cfg, _model(1, 8, 2))
    assert e.value.field == "model.num_classes"
    assert len(str(e.value).splitlines()) == 1 and "has label" in str(e.value)
