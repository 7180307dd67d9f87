"""Build the network a space file describes: torchvision by name, or a user factory."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchcomp.config import ModelConfig
from searchcomp.config.factories import import_factory
from searchcomp.config.inputs import SMALL_INPUT_MAX
from searchcomp.errors import SearchcompError


def build_model(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """The architecture of ``cfg`` with fresh weights, or torchvision's pretrained ones.

    With ``pretrained`` the ImageNet weights are loaded first (torchvision downloads them once
    into its hub cache), then the stem and classifier are adapted: layers whose shape changes
    are re-initialised (a 1-channel stem sums the RGB filters). ``small_input`` gives a
    torchvision model a stride-1 stem (a ResNet a 3x3 one without max-pool); ``auto`` outside
    a space means: for images up to 64 px, unless ``pretrained``.
    """
    if cfg.small_input == "auto":
        cfg = cfg.model_copy(update={"small_input": cfg.image_size <= SMALL_INPUT_MAX
                                     and not pretrained})
    if ":" in cfg.arch:
        if pretrained:
            raise SearchcompError("base.source 'pretrained' needs a torchvision architecture; "
                                  "for a factory model use source 'checkpoint' or 'train'")
        model = _from_factory(cfg)
    else:
        model = _from_torchvision(cfg, pretrained)
    return model


def _from_factory(cfg: ModelConfig) -> nn.Module:
    fn = import_factory(cfg.arch, "model.arch")
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


#: torchvision models with auxiliary classifiers (their training output is a tuple); built
#: without them unless ``model.kwargs`` asks
AUX_LOGITS = ("googlenet", "inception_v3")


def _from_torchvision(cfg: ModelConfig, pretrained: bool) -> nn.Module:
    from torchvision import models

    check_arch(cfg.arch)
    kwargs = dict(cfg.kwargs)
    if cfg.arch in AUX_LOGITS:  # training aids that make forward return a tuple: off
        kwargs.setdefault("aux_logits", False)
        if cfg.arch == "googlenet":
            kwargs.setdefault("init_weights", True)
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
        state = _pretrained_state(cfg.arch)
        if cfg.arch in AUX_LOGITS and not kwargs.get("aux_logits"):
            state = {k: v for k, v in state.items()
                     if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
        model.load_state_dict(state)
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


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The stem: the first Conv2d in registration order (every torchvision classifier
    registers its stem first)."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _adapt_stem(model: nn.Module, cfg: ModelConfig) -> None:
    """Give the stem ``cfg.in_channels`` inputs and, with ``small_input``, stride 1 (a ResNet:
    a 3x3 conv from the centre of the 7x7 filters, and no max-pool)."""
    found = first_conv(model)
    if found is None:
        return
    name, conv = found
    resnet = name == "conv1" and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d)
    small = bool(cfg.small_input)
    if small and resnet:
        k, s, p = (3, 3), (1, 1), (1, 1)
    else:
        k, s, p = conv.kernel_size, ((1, 1) if small else conv.stride), conv.padding
    if conv.in_channels == cfg.in_channels and (k, s) == (conv.kernel_size, conv.stride):
        return
    new = nn.Conv2d(cfg.in_channels, conv.out_channels, k, s, p, conv.dilation, conv.groups,
                    bias=conv.bias is not None)
    with torch.no_grad():
        w = conv.weight
        if w.shape[-1] > k[-1]:
            c = w.shape[-1] // 2
            w = w[..., c - 1:c + 2, c - 1:c + 2]
        if cfg.in_channels != w.shape[1]:
            w = w.sum(1, keepdim=True).repeat(1, cfg.in_channels, 1, 1) / cfg.in_channels
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    set_submodule(model, name, new)
    if small and resnet:
        model.maxpool = nn.Identity()


def _adapt_classifier(model: nn.Module, num_classes: int) -> None:
    name, head = head_candidates(model)[-1]
    if isinstance(head, nn.Linear):
        if head.out_features == num_classes:
            return
        new: nn.Module = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    else:
        if head.out_channels == num_classes:
            return
        new = nn.Conv2d(head.in_channels, num_classes, head.kernel_size, head.stride,
                        head.padding, bias=head.bias is not None)
    set_submodule(model, name, new)


def head_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers a head choice could replace, in registration order: every nn.Linear, or
    for a network without one (a conv classifier, as SqueezeNet's) its last Conv2d."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        found = convs[-1:]
    if not found:
        raise SearchcompError("the model has neither an nn.Linear nor a conv classifier; set "
                              "blocks.head_module", field="blocks.head_module")
    return found


def last_linear(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier ``blocks.head_module: auto`` means: the last nn.Linear in registration
    order (for a conv classifier, the last Conv2d)."""
    return head_candidates(model)[-1]


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
        first = " ".join(s.strip() for s in str(e).splitlines()[:4])
        stem = first_conv(model)
        hint = ""
        if stem and f"{stem[0]}.weight" in first:
            hint = (" (the stem differs: set model.small_input: true if the checkpoint has a "
                    "stride-1 CIFAR stem, false if it has the standard one)")
        raise SearchcompError(f"{path} does not fit model.arch: {first}{hint}",
                              field="base.path") from None


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
