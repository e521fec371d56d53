"""Percentile bootstrap over subjects: 95 % confidence intervals for any metric function."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Resamples per block of the count matrix: at most this many cells, so memory stays bounded for
# a held-out split of any size.
_CELLS_PER_BLOCK = 1 << 22


def with_ci(
    metric_fn: Callable[[np.ndarray], dict[str, float]],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weighted_fn: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, float]]:
    """{metric: {"value", "ci_low", "ci_high"}}. ``metric_fn(rows)`` computes every metric on the
    given row indices; it is called once on all rows and, unless ``weighted_fn`` is given, once
    per resample (rows drawn with replacement). ``weighted_fn(W)`` computes every metric for a
    block of resamples at once from their counts per row (W [B, n]: evaluation/resampled.py);
    both give the same draws and the same interval. Resamples where a metric is undefined (one
    class only) are left out of its CI."""
    point = metric_fn(np.arange(n))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in point}
    if weighted_fn is None:
        for _ in range(n_boot):
            values = metric_fn(rng.integers(0, n, n))
            for k in point:
                draws[k].append(values.get(k, np.nan))
    else:
        block = max(1, _CELLS_PER_BLOCK // max(n, 1))
        for start in range(0, n_boot, block):
            size = min(block, n_boot - start)
            rows = rng.integers(0, n, (size, n))  # the same stream as `size` draws of n, one by one
            counts = np.bincount((rows + n * np.arange(size)[:, None]).ravel(), minlength=size * n)
            values = weighted_fn(counts.reshape(size, n).astype(float))
            for k in point:
                draws[k].extend(values.get(k, np.full(size, np.nan)).tolist())
    tail = 100 * (1 - level) / 2
    out = {}
    for k, value in point.items():
        d = np.asarray(draws[k], float)
        d = d[~np.isnan(d)]
        low, high = np.percentile(d, [tail, 100 - tail]) if len(d) else (np.nan, np.nan)
        out[k] = {"value": float(value), "ci_low": float(low), "ci_high": float(high)}
    return out
