"""Measuring a candidate as deployed: params, MiB, FLOPs (:mod:`.costs`) and latency in a
named runtime (:mod:`.latency`); :func:`measure` gives them all."""

from searchcomp.measure.costs import compute_size_mib, count_flops, count_params
from searchcomp.measure.latency import MIN_RUNS, RUNTIMES, Latency, time_artifact, time_latency
from searchcomp.measure.metrics import Metrics, measure

__all__ = ["MIN_RUNS", "RUNTIMES", "Latency", "Metrics", "compute_size_mib", "count_flops",
           "count_params", "measure", "time_artifact", "time_latency"]
