"""Build the network a space file describes: torchvision by name, or a user factory."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchcomp.config import ModelConfig
from searchcomp.errors import SearchcompError


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


def _import_factory(arch: str):
    """Import ``pkg.mod:fn``; the current directory is searched too, as with ``python -m``."""
    mod_name, fn_name = arch.split(":")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise SearchcompError(f"cannot import {arch!r}: {e}", field="model.arch") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _from_factory(cfg: ModelConfig) -> nn.Module:
    fn = _import_factory(cfg.arch)
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", cfg.num_classes), ("in_channels", cfg.in_channels)):
        if key in params or accepts_any:
            kwargs.setdefault(key, value)
    try:
        model = fn(**kwargs)
    except TypeError as e:
        raise SearchcompError(f"{cfg.arch} does not accept these arguments: {e}",
                              field="model.kwargs") from None
    if not isinstance(model, nn.Module):
        raise SearchcompError(f"{cfg.arch} returned {type(model).__name__}, "
                              "not a torch.nn.Module", field="model.arch")
    return model


def check_arch(arch: str) -> None:
    """Raise a user error naming ``model.arch`` unless it is a torchvision classification
    model or a factory ``pkg.mod:fn`` (whose import is checked when it is built)."""
    if ":" in arch:
        return
    from torchvision import models

    known = models.list_models(module=models)
    if arch not in known:
        resnets = ", ".join(n for n in known if n.startswith("resnet"))
        raise SearchcompError(f"unknown torchvision architecture {arch!r} (e.g. {resnets}); "
                              "or give a factory 'package.module:function'", field="model.arch")


def _from_torchvision(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    from torchvision import models

    check_arch(cfg.arch)
    kwargs = dict(cfg.kwargs)
    try:
        if pretrained:
            model = models.get_model(cfg.arch, weights=None, **kwargs)
        else:
            model = models.get_model(cfg.arch, weights=None, num_classes=cfg.num_classes,
                                     **kwargs)
    except (TypeError, ValueError) as e:
        raise SearchcompError(f"torchvision {cfg.arch} does not accept these arguments: {e}",
                              field="model.kwargs") from None
    if pretrained:
        model.load_state_dict(_pretrained_state(cfg.arch))
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
            f"and put it at {cached}, or use base.source 'train' or 'checkpoint'",
            field="base.source") from None


def _adapt_stem(model: nn.Module, cfg: ModelConfig) -> None:
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d):
        # other families keep their stem: small_input only rewires ResNet-style models
        if cfg.in_channels != 3:
            raise SearchcompError(f"is {cfg.in_channels}, but searchcomp adapts the stem of "
                                  f"ResNet-style models only, not {cfg.arch}; use a factory "
                                  "model 'package.module:function'", field="model.in_channels")
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
        raise SearchcompError(f"checkpoint {path} not found", field="base.path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SearchcompError(f"cannot read checkpoint {path}: {e}", field="base.path") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise SearchcompError(f"{path} holds no state_dict", field="base.path")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        model.load_state_dict(obj)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise SearchcompError(f"{path} does not fit model.arch: "
                              + " ".join(s.strip() for s in first), field="base.path") from None


def check_forward(model: nn.Module, cfg: ModelConfig) -> None:
    """Run one input through ``model`` so a size mismatch fails here, with a clear message."""
    shape = input_shape(cfg)
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(torch.zeros(1, *shape))
            model.train(was)
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        raise SearchcompError(f"{cfg.arch} cannot run on {shape[0]}x{shape[1]}x{shape[2]} "
                              f"inputs: {msg}", field="model.image_size") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, cfg.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SearchcompError(f"is {cfg.num_classes} but the model's output is {got}",
                              field="model.num_classes")


def input_shape(cfg: ModelConfig) -> tuple[int, int, int]:
    """(channels, height, width) of one input image."""
    return (cfg.in_channels, cfg.image_size, cfg.image_size)
