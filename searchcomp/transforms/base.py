"""The contract every layer-replacing transform follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass
class Applied:
    """What a transform hands back: the new layer and its output error right after init.

    ``init_error`` is ||new(x) - old(x)|| / ||old(x)|| on the calibration inputs (or on random
    inputs when none were given), so a user can see how far the init is from the original.
    """

    module: nn.Module
    init_error: float


class Transform(ABC):
    """A choice that replaces one layer (a Conv2d of a block, or the Linear head).

    Subclasses are registered with :func:`searchcomp.transforms.register` under ``name``; a
    choice value in the space file is ``name`` or ``name:arg`` (e.g. ``meta:4``).
    """

    name: ClassVar[str]
    #: the layer type this transform replaces
    target: ClassVar[type[nn.Module]] = nn.Conv2d
    #: whether the value needs ``:arg`` (an int), e.g. ``conv3d:8``
    needs_arg: ClassVar[bool] = False

    def check(self, layer: nn.Module, arg: int | None) -> str | None:
        """Return why this transform cannot apply to ``layer`` with ``arg``, or None."""
        return None

    @abstractmethod
    def apply(self, layer: nn.Module, arg: int | None,
              inputs: torch.Tensor | None = None) -> Applied:
        """Build the replacement of ``layer`` (not modified), initialised from it.

        ``inputs`` are calibration inputs of ``layer`` (a few batches) used for a local fit
        and for the reported init error.
        """

    @abstractmethod
    def expected_params(self, layer: nn.Module, arg: int | None) -> int:
        """Closed-form parameter count of the replacement."""
