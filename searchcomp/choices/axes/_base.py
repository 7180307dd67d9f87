"""The contract of a choice axis: one per-block decision (a conv's kind, a share of filters
pruned, a bit width, a stage's residual width), and everything the rest of the package asks
about it.

An axis declares its values (parsed and checked with no torch), its neutral value (the block
as it is), its one-character summary code, how it is drawn; which values can apply to which
block (:meth:`Axis.narrow`), how it changes a candidate (:meth:`Axis.apply`, in its build
``phase``), which layers its values change and how, from shapes alone (:meth:`Axis.effects`,
:meth:`Axis.resizers`), and what of it the latency table times (:meth:`Axis.latency_key`).
Everything that lists a recipe's choices — the space file, recipes, the Optuna parameters,
the layout of the predictors, the cost and latency tables, the summary line, ``inspect``,
``profile``, the report and the dashboard — iterates over the registry
(:mod:`searchcomp.choices.axes`): a new axis is one new file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: when build applies an axis: on the pure graph (channel counts), then layer replacements,
#: then the weights' representation
PHASES = ("resize", "replace", "weights")


@dataclass
class Resizer:
    """One channel group an axis value shrinks, traced once on the base (shape-only costs):
    removing ``n`` of ``channels`` channels of ``root`` changes each member layer's sizes by
    ``n * per`` along ``kind`` (``out``, ``in``, ``features``, ``depthwise``)."""

    unit: str
    axis: str
    root: str
    channels: int
    #: (layer, kind, per): per = inputs lost per channel (a Linear after a flatten: H * W)
    members: list[tuple[str, str, int]]
    #: the channel multiple a count keeps, for every recipe (recipe-independent rounding)
    multiple: int = 1
    #: (unit, axis) variables the removed count depends on besides ``(unit, axis)`` itself
    #: (e.g. a replacement's channel multiple); the count is :meth:`Axis.count`
    depends: tuple[tuple[str, str], ...] = ()


@dataclass
class BuildState:
    """What :meth:`Axis.apply` works on: the candidate being built, in place."""

    model: Any
    recipe: Any
    blocks: dict[str, Any]
    head_name: str
    calib: Any
    prune_criterion: str = "l1"
    grad_batches: Any = None
    round_to: int = 1
    init: bool = True
    #: the ``onnxruntime-int8`` runtime: False, True (the default scheme) or the study's
    #: :class:`~searchcomp.config.int8.Int8Scheme` (or its name)
    int8: Any = False
    #: relative output errors, by replaced layer or ``<block>:<axis>``
    errors: dict[str, float] = field(default_factory=dict)
    #: per block, per pruned conv: (out channels before, after)
    pruned: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


class Axis(ABC):
    """A per-block choice axis, registered under :attr:`name` (see the module doc)."""

    #: the key in ``blocks.default`` / ``per_block``, in recipes and Optuna parameters
    name: ClassVar[str]
    #: the value that leaves a block as it is
    neutral: ClassVar[Any]
    #: position in recipe rows, the summary line and tables (smaller first)
    order: ClassVar[int] = 100
    #: build phase, one of :data:`PHASES`
    phase: ClassVar[str] = "weights"
    #: True when its values change channel counts (shape-only costs come from its resizers)
    resizes: ClassVar[bool] = False
    #: ``block``: acts inside its block; ``stage``: one value changes several blocks
    scope: ClassVar[str] = "block"
    #: carried in full by every recipe: always a column of the summary line and an Optuna
    #: parameter of every block, even with one value (the built-in axes, for stable studies)
    always: ClassVar[bool] = False
    #: what the axis is, for the legend and the docs
    description: ClassVar[str] = ""
    #: the colour of its report heatmap panel (non-neutral end)
    color: ClassVar[str] = "#6a3d9a"

    # -- values (no torch) -------------------------------------------------------------
    @abstractmethod
    def parse(self, value: Any) -> Any:
        """The value in canonical form; ValueError with a readable reason if it is invalid."""

    def code(self, value: Any) -> str:
        """One character for the summary line; ``.`` for the neutral value."""
        return "." if value == self.neutral else str(value)[:1]

    @abstractmethod
    def legend(self) -> str:
        """What the summary characters mean, after the axis name."""

    def label(self, value: Any) -> str:
        """A short, readable form of a value: a table heading, a part of a recipe line."""
        return f"{self.name} {value}"

    def heat(self, value: Any) -> float | None:
        """The value's position on the report heatmap's scale (0 = neutral), or None for a
        categorical axis (drawn by kind)."""
        return 0.0 if value == self.neutral else 1.0

    #: the top of the heatmap scale
    heat_max: ClassVar[float] = 1.0

    # -- the model ---------------------------------------------------------------------
    def narrow(self, ctx: Any) -> None:
        """Leave out, per block, the values that cannot apply (``ctx.drop``, which refuses
        an explicit ``per_block`` value at its line instead), and register the
        channel groups its values shrink (``ctx.shrink``). Resizing axes narrow first.
        By default every value applies everywhere."""
        return None

    @abstractmethod
    def apply(self, state: BuildState) -> None:
        """Apply the recipe's values of this axis to ``state.model`` (in place)."""

    def restructure(self, arch: Any, recipe: Any, blocks: list[Any], head_name: str) -> None:
        """Shape-only, for a ``replace``-phase axis: give ``arch`` (modified in place) the
        recipe's replaced layers, weights not set (what loading a saved state needs)."""
        return None

    def resizers(self, model: Any, blocks: list[Any], example: Any, head_name: str
                 ) -> list[Resizer]:
        """A resizing axis: the channel groups its values shrink, traced once on ``model``
        (``example``: an input batch; ``head_name``: the classifier the head choice
        replaces)."""
        return []

    def count(self, resizer: Resizer, value: Any, values: dict[tuple[str, str], Any]) -> int:
        """Channels of ``resizer``'s group one value removes (``values``: the values of its
        ``depends`` variables)."""
        return 0

    def effects(self, block: Any, model: Any = None) -> dict[str, str]:
        """A non-resizing axis: the layers of ``block`` (a submodule of ``model``) its values
        change, as layer ->
        ``replace`` (the layer is replaced by the value) or ``bits`` (its weights' width)."""
        return {}

    def anchors(self, allowed: dict[str, list]) -> list[dict[str, Any]]:
        """The one-minute baselines this axis gives a study (``search.anchors``): each a set
        of values applied to every block alike. ``allowed``: per axis, the values other than
        the neutral one that some block allows. Default: each of this axis' values alone."""
        return [{self.name: v} for v in allowed.get(self.name, [])]

    def latency_key(self, value: Any, runtime: str) -> Any:
        """What the latency table times of a value in ``runtime``: the value itself, or the
        neutral one where the value cannot change latency (bits in a float runtime)."""
        return value
