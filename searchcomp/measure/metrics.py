"""Every cost of a candidate at once, with the runtime its latency was measured on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from searchcomp.choices.quant import materialize
from searchcomp.deploy.runtime import get_runtime
from searchcomp.measure.costs import count_flops, count_params
from searchcomp.measure.latency import MIN_RUNS, time_latency


@dataclass
class Metrics:
    """All cost objectives of one candidate."""

    params: int
    #: bytes of the artifact the runtime ships / 2**20
    size_mib: float
    flops: int
    latency_ms: float
    #: what measured ``latency_ms``: runtime, version, threads, CPU features
    latency_runtime: str
    #: the ``measure.runtime`` both ``size_mib`` and ``latency_ms`` are for
    runtime: str = "torch"
    #: the int8-relevant features of the CPU ``latency_ms`` was measured on
    cpu_features: tuple[str, ...] | None = None
    #: the 10th and 90th percentiles of the same timed runs ``latency_ms`` is the median of
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    #: the runs' dispersion says they were timed under load (see ``LOAD_RATIO``)
    latency_under_load: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, as stored with each trial."""
        d = asdict(self)
        if d["cpu_features"] is not None:
            d["cpu_features"] = list(d["cpu_features"])
        return d


def measure(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1,
            threads: int | None = None, runs: int = MIN_RUNS, warmup: int = 5,
            runtime: str = "torch", calib: Tensor | None = None,
            device: torch.device | str = "cpu") -> Metrics:
    """Every cost metric of ``model`` (see :mod:`.costs` and :mod:`.latency` for the
    definitions). The runtime's artifact is serialized once, in memory: its byte count is
    ``size_mib``, and the latency is timed on those very bytes (``calib``: the training
    images ``onnxruntime-int8`` calibrates on), on ``device`` (the deployment target),
    wherever ``model`` lives."""
    artifact = get_runtime(runtime).artifact(model, input_shape, calib)
    deployed = materialize(model)
    lat = time_latency(model, input_shape, batch_size=batch_size, threads=threads, runs=runs,
                       warmup=warmup, runtime=runtime, artifact=artifact, deployed=deployed,
                       device=device)
    return Metrics(params=count_params(model), size_mib=len(artifact) / 2**20,
                   flops=count_flops(model, input_shape, deployed=deployed),
                   latency_ms=lat.median_ms,
                   latency_runtime=lat.runtime, runtime=runtime, cpu_features=lat.cpu_features,
                   latency_p10_ms=lat.p10_ms, latency_p90_ms=lat.p90_ms,
                   latency_under_load=lat.under_load)
