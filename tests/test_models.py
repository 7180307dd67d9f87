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
    # inner layers are the cached weights; the 1-channel 3x3 stem comes from the 7x7 centre
    assert torch.equal(m.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    centre = imagenet.conv1.weight[:, :, 2:5, 2:5].sum(1, keepdim=True)  # gray = R = G = B
    assert torch.allclose(m.conv1.weight, centre)
    assert m.fc.out_features == 10


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
