"""Percentile bootstrap over subjects: 95 % confidence intervals for any metric function."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def with_ci(
    metric_fn: Callable[[np.ndarray], dict[str, float]],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """{metric: {"value", "ci_low", "ci_high"}}. ``metric_fn(rows)`` computes every metric on the
    given row indices; it is called once on all rows and once per resample (rows drawn with
    replacement). Resamples where a metric is undefined (one class only) are left out of its CI."""
    point = metric_fn(np.arange(n))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in point}
    for _ in range(n_boot):
        values = metric_fn(rng.integers(0, n, n))
        for k in point:
            draws[k].append(values.get(k, np.nan))
    tail = 100 * (1 - level) / 2
    out = {}
    for k, value in point.items():
        d = np.asarray(draws[k], float)
        d = d[~np.isnan(d)]
        low, high = np.percentile(d, [tail, 100 - tail]) if len(d) else (np.nan, np.nan)
        out[k] = {"value": float(value), "ci_low": float(low), "ci_high": float(high)}
    return out
