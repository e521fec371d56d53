"""Evaluation subgroups read the cohort a shard at a time, never as one table."""

from __future__ import annotations

from datetime import datetime as D

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data.readers import meds
from medweave.evaluation.subgroups import subject_groups
from tests.unit.test_aces_tasks import write_cohort


def test_groups_from_every_shard_without_reading_the_cohort_whole(tmp_path, monkeypatch):
    events = [(s, D(1930 + 10 * s, 1, 1), "MEDS_BIRTH") for s in (1, 2, 3, 4)]
    events += [
        (1, None, "SEX//F"),
        (2, None, "SEX//M"),
        (3, None, "SEX//M"),
        (4, D(2019, 1, 1), "ICD10//I10"),
    ]
    root = write_cohort(tmp_path / "c", events, shards=3)
    (root / "labels").mkdir()
    labels = {"subject_id": pa.array([1, 2, 3, 4], pa.int64()), "prediction_time": [D(2021, 1, 1)] * 4}
    pq.write_table(
        pa.table(labels | {"boolean_value": [True, False, True, False]}), root / "labels/t.parquet"
    )

    def whole(*args, **kwargs):
        raise AssertionError("read_events holds every shard's events at once")

    monkeypatch.setattr(meds, "read_events", whole)
    groups = subject_groups(
        root, "t", np.array([4, 2, 1]), {"female": ["SEX//F"], "male": ["SEX//M"]}, [18, 40, 60, 75]
    )
    assert groups["sex"].tolist() == ["unknown", "male", "female"]
    assert groups["age_band"].tolist() == ["40-59", "60-74", "75+"]  # born 1970, 1950, 1940
