"""How sure a figure is: the 95 % interval of an accuracy from its evaluation (Wilson, by
scipy), the mean and spread of repeated runs, and the noise of a difference of accuracies.

An accuracy measured on ``n`` images is a binomial proportion: its standard error is
``sqrt(p (1 - p) / n)`` (0.8 pt for 0.84 on 2,000 images). The Wilson interval is the usual
95 % interval for it that stays inside [0, 1] and behaves at 0 and 1. Repeated fine-tunes of
one recipe (``front --confirm``) add what the evaluation cannot see: the spread over seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: two-sided 95 % normal quantile
Z95 = 1.959963984540054


def wilson_interval(accuracy: float, images: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """The Wilson ``confidence`` interval of an accuracy measured on ``images`` images
    (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``)."""
    from scipy.stats import binomtest

    n = int(images)
    if n < 1:
        raise ValueError(f"an interval needs at least one image, got {images}")
    k = min(n, max(0, round(float(accuracy) * n)))
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    # the rounding of k can move the estimate by < 1/(2n): keep it inside its own interval
    return min(float(ci.low), float(accuracy)), max(float(ci.high), float(accuracy))


def binomial_se(accuracy: float, images: int) -> float:
    """Standard error of an accuracy measured on ``images`` images."""
    p = min(1.0, max(0.0, float(accuracy)))
    return math.sqrt(max(p * (1 - p), 0.25 / max(int(images), 1)) / max(int(images), 1))


def accuracy_attrs(accuracy: float, images: int) -> dict[str, Any]:
    """The interval attributes stored beside an accuracy (a trial's, the base's)."""
    low, high = wilson_interval(accuracy, images)
    return {"accuracy_low": low, "accuracy_high": high, "val_images": int(images)}


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one figure: their mean, sample standard deviation, range, and
    the 95 % interval of the mean (Student t; None with one run)."""

    runs: int
    mean: float
    std: float
    low: float
    high: float
    mean_low: float | None
    mean_high: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, as ``front --json`` prints it."""
        return {"runs": self.runs, "mean": self.mean, "std": self.std, "min": self.low,
                "max": self.high, "mean_low": self.mean_low, "mean_high": self.mean_high}


def spread(values: Sequence[float]) -> Spread:
    """Mean and spread of ``values`` (at least one)."""
    from scipy.stats import t

    v = [float(x) for x in values]
    if not v:
        raise ValueError("a spread needs at least one value")
    mean = statistics.fmean(v)
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    if len(v) > 1:
        half = float(t.ppf(0.975, len(v) - 1)) * std / math.sqrt(len(v))
        lo, hi = mean - half, mean + half
    else:
        lo = hi = None
    return Spread(len(v), mean, std, min(v), max(v), lo, hi)


def accuracy_noise(row: dict[str, Any]) -> float:
    """Standard error of a row's accuracy as the front uses it: the evaluation's (binomial,
    on the row's ``val_images``) and, with confirmation runs, the seeds' on top
    (``accuracy_std`` / sqrt(runs): the runs share one validation split, so its sampling error
    does not average out). 0 when the row carries neither."""
    acc, n = row.get("accuracy"), row.get("val_images")
    var = binomial_se(float(acc), int(n)) ** 2 if acc is not None and n else 0.0
    runs = int(row.get("accuracy_runs") or 1)
    if runs > 1 and row.get("accuracy_std") is not None:
        var += float(row["accuracy_std"]) ** 2 / runs
    return math.sqrt(var)


def difference_noise(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Half-width of the 95 % interval of the difference of two rows' accuracies."""
    return Z95 * math.hypot(accuracy_noise(a), accuracy_noise(b))
