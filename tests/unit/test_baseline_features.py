"""The tabular baselines' features, counted by hand on a two-shard cohort, and their models."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.baselines.features import AGE, build_features
from medweave.data import contract as c

PRED = datetime(2020, 1, 1)


def _shard(path, rows):
    table = pa.table(
        {
            "subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()),
            "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
        }
    )
    pq.write_table(table, path)


def before(days: float) -> datetime:
    return PRED - timedelta(days=days)


@pytest.fixture
def features(tmp_path):
    (tmp_path / "data").mkdir()
    _shard(
        tmp_path / "data" / "0.parquet",
        [
            (1, datetime(1950, 1, 1), c.BIRTH_CODE, None),
            (1, None, "SEX//F", None),
            (1, before(400), "A", None),
            (1, before(200), "B", 7.0),
            (1, before(100), "A", None),
            (1, before(20), "B", 5.0),
            (1, before(10), "A", None),
            (1, before(5), "B", None),  # counted, but has no value: the last value stays 5.0
            (1, PRED, "A", None),  # at prediction time: left out
            (1, PRED, "B", 99.0),
            (1, PRED + timedelta(days=5), "A", None),  # after: left out
            (3, before(1), "A", None),  # not labelled
        ],
    )
    _shard(
        tmp_path / "data" / "1.parquet",
        [
            (2, before(1), "B", 0.0),  # a last value of exactly 0 is a value, not a gap
            (2, before(2), "C", None),  # not in the vocabulary
            (2, PRED - timedelta(microseconds=1), "A", None),  # just before: kept, in every window
        ],
    )
    ids = np.array([1, 2])
    pred = np.array([(PRED - datetime(1970, 1, 1)) // timedelta(microseconds=1)] * 2, np.int64)
    return build_features(tmp_path, ids, pred, ["A", "B", "SEX//F"], ["B"], [365, 30])


def _value(f, row: int, name: str):
    col = f.names.index(name)
    lo, hi = f.matrix.indptr[row], f.matrix.indptr[row + 1]
    stored = dict(zip(f.matrix.indices[lo:hi].tolist(), f.matrix.data[lo:hi].tolist(), strict=True))
    return stored.get(col)  # None: not stored (a zero count, or no value)


def test_counts_in_each_window_as_counted_by_hand(features):
    f = features
    expected = {
        "count/30d/A": 1, "count/365d/A": 2, "count/all/A": 3,
        "count/30d/B": 2, "count/365d/B": 3, "count/all/B": 3,
        "count/all/SEX//F": 1,
    }  # fmt: skip
    for name, count in expected.items():
        assert _value(f, 0, name) == count, name
    for name in ("count/30d/SEX//F", "count/365d/SEX//F"):  # static events count in all history only
        assert _value(f, 0, name) is None
    assert _value(f, 1, "count/30d/A") == _value(f, 1, "count/all/A") == 1
    assert _value(f, 1, "count/all/B") == 1
    assert not any("C" in n for n in f.names)  # codes outside the vocabulary are no columns
    assert f.matrix.shape == (2, len(f.names))


def test_last_values_and_age(features):
    f = features
    assert _value(f, 0, "last/B") == 5.0  # not 99.0 (at prediction time), not 7.0 (older)
    assert _value(f, 1, "last/B") == 0.0  # stored
    assert _value(f, 0, AGE) == pytest.approx((PRED - datetime(1950, 1, 1)).days / 365.25)
    assert _value(f, 1, AGE) is None  # no birth event: unknown, not zero
    assert f.values[f.names.index("last/B")] and f.values[f.names.index(AGE)]
    assert not f.values[f.names.index("count/all/B")]


def test_nothing_at_or_after_prediction_time_is_used(tmp_path):
    """Moving prediction time back by a day removes exactly the events of that day."""
    (tmp_path / "data").mkdir()
    _shard(tmp_path / "data" / "0.parquet", [(1, before(1), "A", 2.0), (1, before(3), "A", 1.0)])
    epoch = datetime(1970, 1, 1)
    us = lambda t: np.array([(t - epoch) // timedelta(microseconds=1)], np.int64)  # noqa: E731
    now = build_features(tmp_path, np.array([1]), us(PRED), ["A"], ["A"], [30])
    earlier = build_features(tmp_path, np.array([1]), us(before(1)), ["A"], ["A"], [30])
    assert _value(now, 0, "count/all/A") == 2 and _value(now, 0, "last/A") == 2.0
    assert _value(earlier, 0, "count/all/A") == 1 and _value(earlier, 0, "last/A") == 1.0


def test_models_rank_a_planted_signal_and_choose_on_tuning():
    """Both baselines find a count that drives the label (binary) and the hazard (survival)."""
    from scipy import sparse

    from medweave.baselines.models import GradientBoosting, Linear, tuning_score

    rng = np.random.default_rng(0)
    n = 600
    signal = rng.poisson(1.5, n).astype(float)
    noise = rng.poisson(1.0, (n, 3)).astype(float)
    x = sparse.csr_matrix(np.column_stack([signal, noise]))
    y = (rng.random(n) < 1 / (1 + np.exp(-(signal - 1.5) * 2))).astype(float)
    t = rng.exponential(1000 / np.exp(signal - 1.5))
    event = (rng.random(n) < 0.7).astype(float)
    tr, tu, ho = slice(0, 400), slice(400, 500), slice(500, None)
    for model in (
        GradientBoosting(max_rounds=40, early_stopping_rounds=10, threads=1),
        Linear(penalties=(1e-3, 1e-1)),
    ):
        model.fit("binary", x[tr], y[tr], x[tu], y[tu])
        assert tuning_score("binary", y[ho], model.predict(x[ho]), None) > 0.75
        model.fit("survival", x[tr], event[tr], x[tu], event[tu], t[tr], t[tu])
        risk = model.predict(x[ho])  # a log hazard: higher = sooner
        assert tuning_score("survival", event[ho], risk, t[ho]) > 0.65


def test_unsupported_task_type_is_one_clear_error():
    from medweave.baselines.models import GradientBoosting
    from medweave.errors import MedweaveError

    with pytest.raises(MedweaveError, match="task.type=multiclass is not supported"):
        GradientBoosting().fit("multiclass", None, None, None, None)


@pytest.mark.parametrize("arm", ["baseline_gbm", "baseline_linear"])
def test_ablation_arms_select_the_baseline(arm):
    from tests.conftest import compose

    cfg = compose("train", ["experiment=ablation", f"ablation={arm}", "data.root=/x"])
    assert cfg.baseline.name == arm.removeprefix("baseline_")
    assert list(cfg.data.modalities) == ["ehr_codes"]
    assert compose("train", ["data.root=/x"]).get("baseline") is None  # the neural model by default
