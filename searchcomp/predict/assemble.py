"""Put a predictor together for a space: the exact cost table, the latency table and the
accuracy model, from a model of the architecture and the study's profile file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from searchcomp.config import Space
from searchcomp.models import input_shape
from searchcomp.predict.accuracy import AccuracyModel
from searchcomp.predict.costs import ShapeCosts
from searchcomp.predict.latency import LatencyTable
from searchcomp.predict.layout import Layout
from searchcomp.predict.predictor import Predictor
from searchcomp.predict.sensitivity import Sensitivity, load_sensitivity
from searchcomp.predict.store import ProfileStore


@dataclass
class Tables:
    """Everything known about a space without fine-tuning: its layout, shape-only costs,
    measured block latencies and the sensitivity rows stored so far."""

    layout: Layout
    head_name: str
    shapes: ShapeCosts
    latency: LatencyTable
    sensitivity: Sensitivity
    store: ProfileStore

    def predictor(self, base: dict[str, Any], seed: int = 0) -> Predictor:
        """A predictor over the layout; ``base`` holds the base's measured metrics."""
        costs = self.shapes.table(self.layout).merged(self.latency.table(self.layout))
        model = AccuracyModel(self.layout, self.sensitivity, float(base["accuracy"]), seed,
                              costs)
        return Predictor(self.layout, costs, model, dict(base))

    def reload(self, space: Space) -> Tables:
        """Re-read the sensitivity rows from the store (after new rows were added)."""
        self.sensitivity = load_sensitivity(self.store, space, self.layout, self.head_name)
        return self


def open_tables(space: Space, model: nn.Module, blocks: list[Any], head_name: str,
                study_name: str | None = None, *, measure_latency: bool = False,
                progress: Callable[[int, int], None] | None = None,
                int8_scheme: str | None = None, calib: Any = None) -> Tables:
    """The tables of ``space`` for its study's profile file; with ``measure_latency``, the
    missing block latencies are measured (in the configured runtime) and stored.
    ``int8_scheme`` and ``calib`` (calibration images): the ``onnxruntime-int8`` runtime's
    scheme and what int8 blocks are calibrated on when timed."""
    layout = Layout.from_blocks(blocks, space.blocks.head)
    store = ProfileStore.of_study(space.study_dir(study_name))
    shapes = ShapeCosts(model, blocks, head_name, input_shape(space.model),
                        space.blocks.prune_round_to)
    latency = LatencyTable(shapes, model, space.measure, store, int8_scheme, calib)
    if measure_latency:
        latency.measure(layout, progress)
    sens = load_sensitivity(store, space, layout, head_name)
    return Tables(layout, head_name, shapes, latency, sens, store)
