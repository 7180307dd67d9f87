"""The contract of a layer-replacing choice: everything the rest of the package asks about it.

A choice replaces one layer: a dense spatial ``nn.Conv2d`` of a block (``target = "conv"``)
or the classifier ``nn.Linear`` (``target = "head"``). It declares its value syntax
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
    #: ``"conv"`` (a block's dense spatial convs) or ``"head"`` (the classifier)
    target: ClassVar[str] = "conv"
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

        reason = self.check(layer, arg)
        if reason:
            raise ChoiceError(reason)
        new = self.structure(layer, arg)
        new.train(layer.training)
        if not init:
            return Applied(new, float("nan"))
        x = default_inputs(layer) if inputs is None else inputs
        return Applied(new, float(self.initialise(new, layer, arg, x)))
