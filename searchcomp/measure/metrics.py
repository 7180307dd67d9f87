"""Every cost of a candidate at once, with the runtime its latency was measured on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from searchcomp.choices.quant import materialize
from searchcomp.measure.costs import compute_size_mib, count_flops, count_params
from searchcomp.measure.latency import MIN_RUNS, Runtime, time_latency


@dataclass
class Metrics:
    """All cost objectives of one candidate."""

    params: int
    size_mib: float
    flops: int
    latency_ms: float
    latency_runtime: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, as stored with each trial."""
        return asdict(self)


def measure(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1,
            threads: int | None = None, runs: int = MIN_RUNS, warmup: int = 5,
            runtime: Runtime = "torch", device: torch.device | str = "cpu") -> Metrics:
    """Every cost metric of ``model`` (see :mod:`.costs` and :mod:`.latency` for the
    definitions); the deployed copy is made once and shared. Latency is timed on ``device``
    (the deployment target), wherever ``model`` lives."""
    deployed = materialize(model)
    lat = time_latency(model, input_shape, batch_size=batch_size, threads=threads, runs=runs,
                       warmup=warmup, runtime=runtime, deployed=deployed, device=device)
    return Metrics(params=count_params(model), size_mib=compute_size_mib(model),
                   flops=count_flops(model, input_shape, deployed=deployed),
                   latency_ms=lat.median_ms, latency_runtime=lat.runtime)
