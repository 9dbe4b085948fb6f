"""Percentiles (nearest rank) and summaries of nanosecond samples in microseconds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def summary_us(samples_ns: Sequence[int]) -> dict[str, float]:
    """n, min, median, mean, p99 and max of ``samples_ns``, in microseconds."""
    return {
        "n": len(samples_ns),
        "min_us": round(min(samples_ns) / 1000, 3),
        "median_us": round(percentile(samples_ns, 50) / 1000, 3),
        "mean_us": round(statistics.fmean(samples_ns) / 1000, 3),
        "p99_us": round(percentile(samples_ns, 99) / 1000, 3),
        "max_us": round(max(samples_ns) / 1000, 3),
    }
