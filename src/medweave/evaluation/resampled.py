"""Metrics for many bootstrap resamples at once. A resample drawn with replacement is a row of
counts ``w`` [n] (how often each subject was drawn), and a metric over the repeated rows equals
the metric with each row weighted by its count. So every resample is one row of a matrix
``W`` [B, n] and each metric is a few matrix operations, not B calls into scikit-learn (whose
input checks were 95 % of the end of a run). The tests check each against scikit-learn on the
resampled rows themselves.

Every function returns one value per row of ``W``, NaN where the metric is undefined for that
resample (one class only), as the per-resample functions in metrics.py do.
"""

from __future__ import annotations

import numpy as np

_ERR = {"divide": "ignore", "invalid": "ignore"}


def _tie_groups(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order that sorts ``score`` ascending, start of each run of equal scores in that order)."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    return order, starts


def auroc(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC with ties counted one half, weighted by ``W``."""
    y = np.asarray(y).astype(bool)
    order, starts = _tie_groups(np.asarray(p, float))
    pos = np.add.reduceat(W[:, order] * y[order], starts, axis=1)  # [B, distinct scores]
    neg = np.add.reduceat(W[:, order] * ~y[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(**_ERR):
        value = (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))
    return np.where((pos.sum(1) > 0) & (neg.sum(1) > 0), value, np.nan)


def average_precision(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> np.ndarray:
    """scikit-learn's AP: the sum over thresholds (high to low, ties as one) of recall's step
    times precision there."""
    y = np.asarray(y).astype(bool)
    order, starts = _tie_groups(-np.asarray(p, float))
    tp_step = np.add.reduceat(W[:, order] * y[order], starts, axis=1)
    all_step = np.add.reduceat(W[:, order], starts, axis=1)
    tp, seen = np.cumsum(tp_step, axis=1), np.cumsum(all_step, axis=1)
    positives = tp[:, -1]
    with np.errstate(**_ERR):
        precision = np.where(tp_step > 0, tp / seen, 0.0)  # a step with no positive adds nothing
        value = (tp_step * precision).sum(1) / positives
    negatives = seen[:, -1] - positives
    return np.where((positives > 0) & (negatives > 0), value, np.nan)


def binary(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, AUPRC, Brier score and expected calibration error (10 equal-width bins, as
    metrics.expected_calibration_error)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    total = W.sum(1)
    bins = np.clip(np.floor(p * 10).astype(int), 0, 9)
    onehot = np.eye(10)[bins]  # [n, 10]
    gap = np.abs((W * y) @ onehot - (W * p) @ onehot)  # per bin: |sum w y - sum w p|
    return {
        "auroc": auroc(y, p, W),
        "auprc": average_precision(y, p, W),
        "brier": (W @ (p - y) ** 2) / total,
        "ece": gap.sum(1) / total,
    }


def multiclass(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Macro one-vs-rest AUROC (NaN when a class is missing from the resample, as scikit-learn
    refuses it) and accuracy."""
    y = np.asarray(y).astype(int)
    per_class = np.stack([auroc(y == k, p[:, k], W) for k in range(p.shape[1])], 1)
    return {"auroc": per_class.mean(1), "accuracy": (W @ (p.argmax(1) == y)) / W.sum(1)}


def multilabel(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """Macro AUROC and AUPRC over the labels that have both classes in the resample."""
    y = np.asarray(y).astype(bool)
    out = {}
    for name, fn in (("auroc", auroc), ("auprc", average_precision)):
        per_label = np.stack([fn(y[:, k], p[:, k], W) for k in range(y.shape[1])], 1)
        defined = ~np.isnan(per_label).all(1)
        with np.errstate(**_ERR):
            mean = np.nansum(per_label, 1) / (~np.isnan(per_label)).sum(1)
        out[name] = np.where(defined, mean, np.nan)
    return out


def regression(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> dict[str, np.ndarray]:
    """R² (1 when a constant target is predicted exactly, else 0 for a constant target, as
    scikit-learn), MAE and RMSE."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    total = W.sum(1)
    mean_y = (W @ y) / total
    ss_res = W @ (y - p) ** 2
    ss_tot = (W * (y[None, :] - mean_y[:, None]) ** 2).sum(1)
    with np.errstate(**_ERR):
        r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return {"r2": r2, "mae": (W @ np.abs(y - p)) / total, "rmse": np.sqrt(ss_res / total)}


KINDS = {"binary": binary, "multiclass": multiclass, "multilabel": multilabel, "regression": regression}
