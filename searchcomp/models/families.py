"""Which modules of a CNN are its blocks (``blocks.select: auto``), what family each belongs
to, and which of its convs a ``conv`` choice replaces.

- residual: torchvision ``BasicBlock`` / ``Bottleneck`` (ResNet, ResNeXt, Wide ResNet),
  ``ResBottleneckBlock`` (RegNet), ``CNBlock`` (ConvNeXt);
- inverted residual: ``InvertedResidual`` (MobileNetV2/V3, ShuffleNetV2), ``MBConv`` /
  ``FusedMBConv`` (EfficientNet V1/V2), ``_InvertedResidual`` (MNASNet);
- dense: ``_DenseLayer`` (DenseNet: its output is concatenated to its input);
- branches: ``Inception`` (GoogLeNet), ``InceptionA``..``InceptionE`` (Inception v3),
  ``Fire`` (SqueezeNet): parallel branches concatenated;
- plain: a network with none of those (VGG, AlexNet, a user's own CNN): every conv is a
  block, with the BN and activation wrapped around it when a module holds just those.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from searchcomp.choices import conv_kind

RESIDUAL = ("BasicBlock", "Bottleneck", "ResBottleneckBlock", "CNBlock")
INVERTED_RESIDUAL = ("InvertedResidual", "_InvertedResidual", "MBConv", "FusedMBConv")
DENSE = ("_DenseLayer",)
BRANCHES = ("Inception", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE",
            "Fire")
#: every kind of block ``select: auto`` finds, by family
FAMILIES = {"residual": RESIDUAL, "inverted residual": INVERTED_RESIDUAL, "dense": DENSE,
            "branches": BRANCHES}
#: squeeze-and-excitation gates: their 1x1 convs act on pooled vectors, not feature maps
_SE = ("squeezeexcitation", "squeezeexcite", "selayer", "semodule", "seblock")


def family_of(module: nn.Module) -> str:
    """``residual``, ``inverted residual``, ``dense``, ``branches``, ``plain`` (one conv) or
    ``module`` (a glob's pick of any other kind)."""
    kind = type(module).__name__
    for family, kinds in FAMILIES.items():
        if kind in kinds:
            return family
    if sum(isinstance(m, nn.Conv2d) for m in module.modules()) == 1:
        return "plain"
    return "module"


def auto_blocks(model: nn.Module) -> list[str]:
    """The blocks ``select: auto`` finds: the blocks of a known family (:data:`FAMILIES`), or,
    in a network with none, every conv (as :func:`plain_block` wraps it)."""
    kinds = {k for ks in FAMILIES.values() for k in ks}
    known = [n for n, m in model.named_modules() if n and type(m).__name__ in kinds]
    if known:
        return known
    out: list[str] = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            block = plain_block(model, n)
            if block not in out:
                out.append(block)
    return out


def plain_block(model: nn.Module, conv_name: str) -> str:
    """The outermost module around conv ``conv_name`` that holds no other conv or linear (e.g.
    ``nn.Sequential(conv, bn, relu)``), or the conv itself (in a flat ``features`` list)."""
    name = conv_name
    while "." in name:
        parent = name.rsplit(".", 1)[0]
        inner = list(model.get_submodule(parent).modules())
        if sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in inner) != 1:
            break
        name = parent
    return name


def select_glob(named: list[tuple[str, nn.Module]], glob: str) -> list[str]:
    """Module names matching ``glob`` that hold parameters."""
    return [n for n, m in named if fnmatch.fnmatchcase(n, glob)
            and any(True for _ in m.parameters())]


def conv_targets(block: nn.Module, prefix: str) -> tuple[str, ...]:
    """The convs (full names) a block's ``conv`` choice replaces: its dense spatial convs, or
    for a block without any (an inverted residual, whose one spatial conv is depthwise) its
    dense pointwise convs, squeeze-and-excitation gates left out. Depthwise and grouped convs
    are never targets."""
    def full(n: str) -> str:
        return f"{prefix}.{n}" if n else prefix

    skip: set[int] = set()
    for m in block.modules():
        if type(m).__name__.lower().lstrip("_") in _SE:
            skip |= {id(x) for x in m.modules()}
    kinds = [(full(n), conv_kind(m)) for n, m in block.named_modules() if id(m) not in skip]
    spatial = tuple(n for n, k in kinds if k == "spatial")
    return spatial or tuple(n for n, k in kinds if k == "pointwise")
