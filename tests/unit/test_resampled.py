"""The bootstrap's batched metrics (evaluation/resampled.py) against scikit-learn on the
resampled rows themselves, and the intervals against the one-resample-at-a-time loop."""

import numpy as np
import pytest

from medweave.evaluation import metrics as M
from medweave.evaluation import resampled
from medweave.evaluation.bootstrap import with_ci
from medweave.evaluation.summary import Predictions, metric_fn, weighted_fn

PER_RESAMPLE = {
    "binary": M.binary_metrics,
    "multiclass": M.multiclass_metrics,
    "multilabel": M.multilabel_metrics,
    "regression": M.regression_metrics,
}


def _data(kind: str, n: int, rng):
    if kind == "binary":
        y = (rng.random(n) < 0.2).astype(float)
        p = np.round(np.clip(0.2 + 0.3 * (y - 0.2) + 0.15 * rng.standard_normal(n), 0, 1), 2)  # ties
        return y, p
    if kind == "multiclass":
        y = rng.integers(0, 3, n)
        logits = rng.standard_normal((n, 3)) + np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return y, p
    if kind == "multilabel":
        y = (rng.random((n, 3)) < [0.5, 0.2, 0.04]).astype(float)
        return y, np.round(np.clip(0.3 * y + 0.5 * rng.random((n, 3)), 0, 1), 1)
    y = rng.standard_normal(n)
    return y, y + 0.5 * rng.standard_normal(n)


@pytest.mark.parametrize("kind", list(PER_RESAMPLE))
def test_each_resample_matches_scikit_learn_on_its_rows(kind):
    rng = np.random.default_rng(1)
    y, p = _data(kind, 60, rng)
    rows = rng.integers(0, 60, (40, 60))
    W = np.stack([np.bincount(r, minlength=60) for r in rows]).astype(float)
    batched = resampled.KINDS[kind](y, p, W)
    for b, r in enumerate(rows):
        expected = PER_RESAMPLE[kind](y[r], p[r])
        for name, value in expected.items():
            np.testing.assert_allclose(batched[name][b], value, rtol=1e-10, atol=1e-12, err_msg=name)


def test_undefined_resamples_are_nan():
    y, p = np.array([0.0, 0.0, 1.0, 1.0]), np.array([0.1, 0.2, 0.3, 0.9])
    W = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])  # only negatives; both classes
    out = resampled.binary(y, p, W)
    assert np.isnan(out["auroc"][0]) and np.isnan(out["auprc"][0]) and out["auroc"][1] == 1.0


@pytest.mark.parametrize("kind", list(PER_RESAMPLE))
def test_intervals_equal_the_per_resample_loop(kind):
    rng = np.random.default_rng(2)
    y, p = _data(kind, 80, rng)
    preds = Predictions(p, y)
    loop = with_ci(metric_fn(kind, preds, None, None), 80, n_boot=200, seed=5)
    fast = with_ci(
        metric_fn(kind, preds, None, None), 80, n_boot=200, seed=5, weighted_fn=weighted_fn(kind, preds)
    )
    for name in loop:
        for key in ("value", "ci_low", "ci_high"):
            np.testing.assert_allclose(fast[name][key], loop[name][key], rtol=1e-10, err_msg=f"{name} {key}")


def test_blocks_of_resamples_give_the_same_interval(monkeypatch):
    from medweave.evaluation import bootstrap

    rng = np.random.default_rng(3)
    y, p = _data("binary", 50, rng)
    preds = Predictions(p, y)
    args = (metric_fn("binary", preds, None, None), 50, 300, 1)
    whole = with_ci(*args, weighted_fn=weighted_fn("binary", preds))
    monkeypatch.setattr(bootstrap, "_CELLS_PER_BLOCK", 7 * 50)  # blocks of 7 resamples
    blocked = with_ci(*args, weighted_fn=weighted_fn("binary", preds))
    for name, entry in whole.items():  # equal up to the order of floating-point sums
        for key, value in entry.items():
            np.testing.assert_allclose(blocked[name][key], value, rtol=1e-12)
