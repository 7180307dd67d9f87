"""The contract of a layer-replacing choice: everything the rest of the package asks about it.

A choice replaces one layer: a dense ``nn.Conv2d`` of a block (``target = "conv"``; which
kinds of dense conv, spatial k x k or pointwise 1x1, it declares in ``kinds``) or the
classifier (``target = "head"``). It declares its value syntax
(``name`` or ``name:ARG``, plus ``aliases``), its one-letter ``code`` for the one-line
recipe summary, the channel multiple pruning must keep for it, why it cannot apply to a
layer, its closed-form parameter count, how to build the new layer's structure and how to
initialise it from the old one. Nothing else in the package names a particular choice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from searchcomp.errors import ChoiceError

TARGETS = ("conv", "head")
#: the kinds of conv a ``conv`` choice may replace: dense (groups=1) k x k with k > 1, dense 1x1
CONV_KINDS = ("spatial", "pointwise")
_KIND_TEXT = {"spatial": "dense k x k (k > 1)", "pointwise": "dense 1x1"}


def conv_kind(layer: nn.Module) -> str | None:
    """``spatial`` or ``pointwise`` for a dense Conv2d, None for anything else (depthwise and
    grouped convs included: no choice replaces those)."""
    if not isinstance(layer, nn.Conv2d) or layer.groups != 1:
        return None
    return "pointwise" if tuple(layer.kernel_size) == (1, 1) else "spatial"


@dataclass
class Applied:
    """What applying a choice hands back: the new layer and its output error after init.

    ``init_error`` is ||new(x) - old(x)|| / ||old(x)|| on the calibration inputs (or on random
    inputs when none were given), so a user can see how far the init is from the original.
    """

    module: nn.Module
    init_error: float


class Choice(ABC):
    """A per-block choice that replaces one layer, registered under ``(target, name)``.

    Subclasses set the class attributes, implement :meth:`check`, :meth:`expected_params`,
    :meth:`structure` and :meth:`initialise`, and are registered by
    :func:`searchcomp.choices.register` (a module in ``searchcomp/choices/layers/`` or a
    plugin's ``searchcomp.choices`` entry point).
    """

    #: the value in the space file: ``name`` or ``name:ARG``
    name: ClassVar[str]
    #: other spellings accepted for ``name``
    aliases: ClassVar[tuple[str, ...]] = ()
    #: ``"conv"`` (a block's dense convs) or ``"head"`` (the classifier)
    target: ClassVar[str] = "conv"
    #: ``conv`` choices: the kinds of dense conv it can replace (:data:`CONV_KINDS`). A block's
    #: conv choice replaces its dense spatial convs, or in a block without any (an inverted
    #: residual, whose only spatial conv is depthwise) its pointwise ones.
    kinds: ClassVar[tuple[str, ...]] = ("spatial",)
    #: whether the value needs ``:ARG`` (a positive integer), e.g. ``conv3d:8``
    needs_arg: ClassVar[bool] = False
    #: one character for the recipe summary line (``conv S..M``); unique per target
    code: ClassVar[str] = "?"
    #: what the choice is, for the legend of the summary and the README
    description: ClassVar[str] = ""
    #: a short label for narrow places (heatmap cells); default: ``name``
    short: ClassVar[str] = ""
    #: steps of the local fit after the closed-form init (0 = none)
    fit_steps: ClassVar[int] = 0

    def channel_multiple(self, arg: int | None) -> int:
        """Channel count pruning must keep a multiple of so this choice still applies to the
        pruned layer (e.g. the groups of a grouped conv)."""
        return 1

    def check(self, layer: nn.Module, arg: int | None) -> str | None:
        """Why this choice cannot replace ``layer`` with ``arg``, or None."""
        return None

    def reason(self, layer: nn.Module, arg: int | None) -> str | None:
        """Why this choice cannot replace ``layer``: a conv of a kind it does not declare
        (``kinds``), or what :meth:`check` says; None if it can."""
        if self.target == "conv":
            kind = conv_kind(layer)
            if isinstance(layer, nn.Conv2d) and kind not in self.kinds:
                what = f"a {_KIND_TEXT[kind]} conv" if kind else \
                    f"a grouped conv (groups={layer.groups})"
                wants = " or ".join(_KIND_TEXT[k] for k in self.kinds)
                return f"{self.value(arg)} replaces {wants} convs; this is {what}"
        return self.check(layer, arg)

    @abstractmethod
    def expected_params(self, layer: nn.Module, arg: int | None) -> int:
        """Closed-form parameter count of the replacement of ``layer``."""

    @abstractmethod
    def structure(self, layer: nn.Module, arg: int | None) -> nn.Module:
        """The replacement's modules with ``layer``'s geometry, device and dtype, weights not
        yet set: what loading a saved state needs."""

    @abstractmethod
    def initialise(self, new: nn.Module, layer: nn.Module, arg: int | None,
                   inputs: torch.Tensor) -> float:
        """Set ``new``'s weights from ``layer`` (not modified) using calibration ``inputs``
        of the layer; return the relative output error left."""

    @property
    def label(self) -> str:
        """``short`` if set, else ``name``."""
        return self.short or self.name

    def value(self, arg: int | None) -> str:
        """The space-file spelling of this choice with ``arg``."""
        return self.name if arg is None else f"{self.name}:{arg}"

    def apply(self, layer: nn.Module, arg: int | None, inputs: torch.Tensor | None = None,
              *, init: bool = True) -> Applied:
        """Build the replacement of ``layer`` (never modified) and, with ``init``, initialise
        it from ``layer`` on ``inputs`` (seeded random inputs when None). Without ``init``
        the weights are left as constructed (they are about to be loaded) and the error is
        reported as NaN."""
        from searchcomp.choices.fit import default_inputs

        why = self.reason(layer, arg)
        if why:
            raise ChoiceError(why)
        new = self.structure(layer, arg)
        new.train(layer.training)
        if not init:
            return Applied(new, float("nan"))
        x = default_inputs(layer) if inputs is None else inputs
        return Applied(new, float(self.initialise(new, layer, arg, x)))
