"""Build the network a space file describes: torchvision by name, or a user factory."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchcomp.errors import SearchcompError
from searchcomp.space import ModelConfig


def build_model(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """The architecture of ``cfg`` with fresh weights, or torchvision's pretrained ones.

    With ``pretrained`` the ImageNet weights are loaded first (torchvision downloads them once
    into its hub cache), then the stem and classifier are adapted: layers whose shape changes
    are re-initialised (a 1-channel stem sums the RGB filters; a 3x3 small-input stem takes
    the centre of the 7x7 filters).
    """
    if ":" in cfg.arch:
        if pretrained:
            raise SearchcompError("base.source 'pretrained' needs a torchvision architecture; "
                                  "for a factory model use source 'checkpoint' or 'train'")
        model = _from_factory(cfg)
    else:
        model = _from_torchvision(cfg, pretrained)
    return model


def _from_factory(cfg: ModelConfig) -> nn.Module:
    mod_name, fn_name = cfg.arch.split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise SearchcompError(f"model.arch: cannot import {cfg.arch!r}: {e}") from None
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", cfg.num_classes), ("in_channels", cfg.in_channels)):
        if key in params or accepts_any:
            kwargs.setdefault(key, value)
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise SearchcompError(f"model.arch: {cfg.arch} returned {type(model).__name__}, "
                              "not a torch.nn.Module")
    return model


def _from_torchvision(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    from torchvision import models

    kwargs = dict(cfg.kwargs)
    if pretrained:
        model = models.get_model(cfg.arch, weights=None, **kwargs)
        model.load_state_dict(_pretrained_state(cfg.arch))
    else:
        model = models.get_model(cfg.arch, weights=None, num_classes=cfg.num_classes, **kwargs)
    _adapt_stem(model, cfg)
    if pretrained:
        _adapt_classifier(model, cfg.num_classes)
    return model


def _pretrained_state(arch: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:  # urllib raises several kinds when offline
        raise SearchcompError(
            f"cannot load pretrained weights for {arch}: {e}. Offline? Download {weights.url} "
            f"and put it at {cached}, or use base.source 'train' or 'checkpoint'") from None


def _adapt_stem(model: nn.Module, cfg: ModelConfig) -> None:
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d):
        if cfg.small_input and not cfg.arch.startswith(("resnet", "wide_resnet", "resnext")):
            return  # other families keep their stem; small_input only rewires ResNets
        if cfg.in_channels != 3:
            raise SearchcompError(f"model.in_channels {cfg.in_channels}: cannot adapt the stem "
                                  f"of {cfg.arch}; use a factory model")
        return
    k, s, p = (3, 1, 1) if cfg.small_input else (conv.kernel_size[0], conv.stride, conv.padding)
    if conv.in_channels == cfg.in_channels and not cfg.small_input:
        return
    new = nn.Conv2d(cfg.in_channels, conv.out_channels, k, s, p, bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight
        if cfg.small_input and w.shape[-1] > 3:
            c = w.shape[-1] // 2
            w = w[..., c - 1:c + 2, c - 1:c + 2]
        if cfg.in_channels != w.shape[1]:
            w = w.sum(1, keepdim=True).repeat(1, cfg.in_channels, 1, 1) / cfg.in_channels
        new.weight.copy_(w)
    model.conv1 = new
    if cfg.small_input and hasattr(model, "maxpool"):
        model.maxpool = nn.Identity()


def _adapt_classifier(model: nn.Module, num_classes: int) -> None:
    name, head = last_linear(model)
    if head.out_features == num_classes:
        return
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    set_submodule(model, name, new)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier: the last nn.Linear in registration order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise SearchcompError("the model has no nn.Linear classifier; set blocks.head_module")
    return found[-1]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a state_dict file (or a dict holding one) into ``model``, strictly."""
    path = Path(path)
    if not path.is_file():
        raise SearchcompError(f"base.path: checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SearchcompError(f"base.path: cannot read checkpoint {path}: {e}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise SearchcompError(f"base.path: {path} holds no state_dict")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(obj)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise SearchcompError(f"base.path: {path} does not fit model.arch: "
                              + " ".join(s.strip() for s in first)) from None


def input_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(channels, height, width) of one input image."""
    return (cfg.in_channels, cfg.image_size, cfg.image_size)
