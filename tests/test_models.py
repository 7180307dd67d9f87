"""Base architectures: torchvision by name, factories, pretrained from the hub cache, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from searchcomp.config import ModelConfig
from searchcomp.errors import SearchcompError
from searchcomp.models import build_model, load_checkpoint


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet50_for_cifar10_has_23_5m_params():
    m = build_model(ModelConfig(arch="resnet50", num_classes=10))
    assert _n(m) == 23_520_842  # 23.5 M; the 7x7 stem would add 7,680
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_standard_stem_and_one_channel():
    m = build_model(ModelConfig(arch="resnet18", in_channels=1, small_input=False))
    assert m.conv1.kernel_size == (7, 7) and m.conv1.in_channels == 1
    assert isinstance(m.maxpool, nn.MaxPool2d)
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 10)


def test_factory_gets_num_classes_and_channels():
    m = build_model(ModelConfig(arch="tests.tiny_factory:tiny_cnn", num_classes=7,
                                in_channels=2, kwargs={"width": 4}))
    assert m(torch.randn(1, 2, 8, 8)).shape == (1, 7)
    with pytest.raises(SearchcompError, match="cannot import"):
        build_model(ModelConfig(arch="tests.tiny_factory:nothing_here"))


def test_pretrained_loads_from_the_hub_cache(tmp_path, monkeypatch):
    from torchvision.models import get_model_weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = get_model_weights("resnet18").DEFAULT.url
    ckpt = tmp_path / "hub" / "checkpoints" / Path(url).name
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(3)
    imagenet = resnet18()
    torch.save(imagenet.state_dict(), ckpt)
    m = build_model(ModelConfig(arch="resnet18", num_classes=10, in_channels=1, image_size=28),
                    pretrained=True)
    # inner layers are the cached weights; small_input auto keeps the pretrained 7x7 stem,
    # summed over RGB for gray images
    assert torch.equal(m.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    gray = imagenet.conv1.weight.sum(1, keepdim=True)  # gray = R = G = B
    assert m.conv1.stride == (2, 2) and torch.allclose(m.conv1.weight, gray)
    assert m.fc.out_features == 10
    # asked for explicitly (outside a space, which refuses it), a 3x3 stem from the centre
    m = build_model(ModelConfig(arch="resnet18", num_classes=10, in_channels=1, image_size=28,
                                small_input=True), pretrained=True)
    centre = imagenet.conv1.weight[:, :, 2:5, 2:5].sum(1, keepdim=True)
    assert torch.allclose(m.conv1.weight, centre)


def test_pretrained_offline_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    with pytest.raises(SearchcompError, match="hub/checkpoints/resnet18"):
        build_model(ModelConfig(arch="resnet18"), pretrained=True)


def test_checkpoint_loading(tmp_path):
    cfg = ModelConfig(arch="resnet18", num_classes=10)
    a, b = build_model(cfg), build_model(cfg)
    torch.save({"state_dict": a.state_dict()}, tmp_path / "ck.pt")
    load_checkpoint(b, tmp_path / "ck.pt")
    assert torch.equal(a.fc.weight, b.fc.weight)
    wrong = build_model(ModelConfig(arch="resnet18", num_classes=5))
    with pytest.raises(SearchcompError, match="does not fit"):
        load_checkpoint(wrong, tmp_path / "ck.pt")
    with pytest.raises(SearchcompError, match="not found"):
        load_checkpoint(b, tmp_path / "missing.pt")


def test_small_input_auto_and_other_families():
    big = build_model(ModelConfig(arch="resnet18", image_size=224))
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    small = build_model(ModelConfig(arch="resnet18", image_size=32))
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    # MobileNetV2 on gray 28 px images: a 1-channel, stride-1 stem, and it runs
    mb = build_model(ModelConfig(arch="mobilenet_v2", in_channels=1, image_size=28,
                                 kwargs={"width_mult": 0.25}))
    stem = mb.features[0][0]
    assert stem.in_channels == 1 and stem.stride == (1, 1) and stem.kernel_size == (3, 3)
    assert mb(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    standard = build_model(ModelConfig(arch="mobilenet_v2", in_channels=1, image_size=96,
                                       kwargs={"width_mult": 0.25}))
    assert standard.features[0][0].stride == (2, 2)


def test_conv_classifier_is_the_head():
    from searchcomp.models import head_candidates, last_linear

    m = build_model(ModelConfig(arch="squeezenet1_1", num_classes=10, image_size=64))
    name, layer = last_linear(m)
    assert name == "classifier.1" and isinstance(layer, nn.Conv2d) and layer.out_channels == 10
    assert [n for n, _ in head_candidates(m)] == ["classifier.1"]


def test_checkpoint_with_another_stem_says_which_setting(tmp_path):
    small = build_model(ModelConfig(arch="resnet18", image_size=32, small_input=True))
    torch.save(small.state_dict(), tmp_path / "cifar.pt")
    standard = build_model(ModelConfig(arch="resnet18", image_size=32, small_input=False))
    with pytest.raises(SearchcompError, match="small_input: true if the checkpoint"):
        load_checkpoint(standard, tmp_path / "cifar.pt")
