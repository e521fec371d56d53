"""The MEDS reader on exports as MEDS ETLs write them: layouts, types, splits and label files."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.ehr import EhrCache
from medweave.data.prepare import PrepareConfig, prepare
from medweave.data.readers import meds
from medweave.data.validate import validate_cohort
from medweave.errors import MedweaveError

T0 = datetime(2020, 1, 1)


def us(day: int) -> int:
    return int((datetime(2020, 1, 1 + day) - datetime(1970, 1, 1)).total_seconds() * 1_000_000)


def events(ids, days, codes, values=None, time_type=None, **extra) -> pa.Table:
    """An event table; days=None means a static event. ``extra`` columns ride along."""
    time_type = time_type or pa.timestamp("us")
    times = pa.array([None if d is None else us(d) for d in days], pa.int64()).cast(pa.timestamp("us"))
    columns = {
        "subject_id": pa.array(ids, pa.int64()),
        "time": times.cast(time_type),
        "code": pa.array(codes, pa.string()),
    }
    if values is not False:
        columns["numeric_value"] = pa.array(values or [None] * len(ids), pa.float64())
    return pa.table({**columns, **{k: pa.array(v) for k, v in extra.items()}})


def write(root: Path, rel: str, table: pa.Table) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def labels(ids, days, values, **extra) -> pa.Table:
    return pa.table(
        {
            "subject_id": pa.array(ids, pa.int64()),
            "prediction_time": pa.array([us(d) for d in days], pa.int64()).cast(pa.timestamp("us")),
            "boolean_value": pa.array(values, pa.bool_()),
            **{k: pa.array(v) for k, v in extra.items()},
        }
    )


@pytest.fixture
def export(tmp_path):
    """Ten subjects, events sharded by split in sub-folders, extra columns, no code metadata,
    no dataset.json: as a MEDS ETL may leave it."""
    root = tmp_path / "export"
    split = ["train"] * 6 + ["tuning"] * 2 + ["held_out"] * 2
    for name in ("train", "tuning", "held_out"):
        ids = [i for i in range(10) if split[i] == name]
        rows = [(i, d, code) for i in ids for d, code in ((None, "SEX//F"), (1, "A"), (3, "B"), (9, "LATE"))]
        table = events(
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [1.5 if r[2] == "A" else None for r in rows],
            hospital_id=["h1"] * len(rows),  # an extra column, as ETLs keep source columns
        )
        write(root, f"data/{name}/0.parquet", table)
    write(
        root,
        c.SUBJECT_SPLITS,
        pa.table({"subject_id": pa.array(range(10), pa.int64()), "split": split, "source": ["x"] * 10}),
    )
    write(root, "labels/task.parquet", labels(range(10), [5] * 10, [i % 2 == 0 for i in range(10)]))
    return root


def cfg(**kw) -> PrepareConfig:
    return PrepareConfig(**{"task": "task", "modalities": ("ehr_codes",), "min_subjects": 1, **kw})


def prepared(root, tmp_path, **kw):
    out = prepare(root, tmp_path / "cache", cfg(**kw))
    vocab = json.loads((out / "vocab.json").read_text())
    cache = EhrCache(out, vocab)
    return np.load(out / "subjects.npz"), cache.batch(np.arange(len(cache.index)), width=256)["codes"], out


def test_sharded_sub_folders_extra_columns_and_no_metadata(export, tmp_path):
    subjects, codes, out = prepared(export, tmp_path)
    assert subjects["subject_id"].tolist() == list(range(10))
    assert subjects["split"].tolist() == [0] * 6 + [1] * 2 + [2] * 2
    assert (codes > 0).sum(1).tolist() == [3] * 10  # A, B and the static event; LATE is after day 5
    assert validate_cohort(export).ok, [str(p) for p in validate_cohort(export).problems]


@pytest.mark.parametrize(
    "time_type",
    [
        pa.timestamp("ns"),
        pa.timestamp("ms"),
        pa.timestamp("us", tz="UTC"),
        pa.timestamp("ns", tz="Europe/Copenhagen"),
    ],
)
def test_other_time_units_and_zones_are_read_as_utc_microseconds(tmp_path, time_type):
    write(tmp_path, "data/0.parquet", events([1, 1], [None, 2], ["S", "A"], time_type=time_type))
    table = meds.read_events(tmp_path, with_text=False)
    assert table.schema.field("time").type == pa.timestamp("us")
    assert meds.microseconds(table.column("time"))[1] == us(2)  # the stored UTC instant
    assert table.column("time")[0].as_py() is None  # static stays static


@pytest.mark.parametrize(
    "values", [pa.array([1.0, None], pa.float64()), pa.nulls(2), pa.array([3, None], pa.int32())]
)
def test_numeric_value_float64_null_typed_or_integer(tmp_path, values):
    write(
        tmp_path,
        "data/0.parquet",
        events([1, 1], [1, 2], ["A", "B"], values=False).append_column("numeric_value", values),
    )
    table = meds.read_events(tmp_path, with_text=True)
    assert table.schema.field("numeric_value").type == pa.float32()
    assert table.column("text_value").null_count == 2  # text_value is optional in MEDS


def test_numeric_value_column_is_optional(tmp_path):
    write(tmp_path, "data/0.parquet", events([1], [1], ["A"], values=False))
    assert meds.read_events(tmp_path, with_text=False).column("numeric_value").null_count == 1


def test_events_are_filtered_to_the_subjects_asked_for(export):
    table = meds.read_events(export, with_text=False, subjects=np.array([3, 8]))
    assert sorted(set(table.column("subject_id").to_pylist())) == [3, 8]


def test_string_time_is_refused_strict_and_parsed_lenient(tmp_path, caplog):
    table = events([1, 1, 1], [1, 2, 3], ["A", "B", "C"])
    times = pa.array(["2020-01-02T00:00:00", "junk", "2020-01-04 00:00:00"])
    write(tmp_path, "data/0.parquet", table.set_column(1, "time", times))
    with pytest.raises(MedweaveError, match=r"0.parquet: column time: has type string; expected timestamp"):
        meds.read_events(tmp_path, with_text=False)
    bad = BadInput(lenient=True)
    with caplog.at_level(logging.WARNING):
        read = meds.read_events(tmp_path, with_text=False, bad=bad)
    assert read.column("code").to_pylist() == ["A", "C"]
    assert any(
        "row 1, field time" in r.getMessage() and "skipped 1" in r.getMessage() for r in caplog.records
    )


def test_custom_splits_are_left_out_with_a_warning(export, tmp_path, caplog):
    splits = pq.read_table(export / c.SUBJECT_SPLITS).to_pandas()
    splits.loc[[0, 1], "split"] = "external_validation_2019"
    write(export, c.SUBJECT_SPLITS, pa.Table.from_pandas(splits, preserve_index=False))
    with caplog.at_level(logging.WARNING):
        subjects, _, _ = prepared(export, tmp_path)
    assert 0 not in subjects["subject_id"] and 1 not in subjects["subject_id"] and len(subjects["split"]) == 8
    assert any(
        "2 subject(s) are in split(s) ['external_validation_2019']" in r.getMessage() for r in caplog.records
    )
    report = validate_cohort(export)
    assert report.ok and report.counts["subjects_in_custom_splits"] == 2


@pytest.mark.parametrize("name,meant", [("test", "held_out"), ("val", "tuning"), ("trian", "train")])
def test_misnamed_splits_are_errors_in_both_modes(export, tmp_path, name, meant):
    splits = pq.read_table(export / c.SUBJECT_SPLITS).to_pandas()
    splits.loc[7, "split"] = name
    write(export, c.SUBJECT_SPLITS, pa.Table.from_pandas(splits, preserve_index=False))
    for lenient in (False, True):
        with pytest.raises(
            MedweaveError,
            match=f"row 7, field split: '{name}' is not a MEDS split name; did you mean '{meant}'",
        ):
            prepared(export, tmp_path, lenient=lenient)


def test_subject_in_two_splits_lenient_drops_the_subject(export, tmp_path):
    splits = pq.read_table(export / c.SUBJECT_SPLITS)
    extra = pa.table({"subject_id": pa.array([4], pa.int64()), "split": ["held_out"], "source": ["y"]})
    write(export, c.SUBJECT_SPLITS, pa.concat_tables([splits, extra]))
    with pytest.raises(MedweaveError, match="row 10, field split: subject listed in two splits"):
        prepared(export, tmp_path)
    subjects, _, _ = prepared(export, tmp_path, lenient=True)
    assert 4 not in subjects["subject_id"] and len(subjects["subject_id"]) == 9


def test_several_prediction_times_per_subject(export, tmp_path):
    more = labels([2, 2, 3], [2, 8, 8], [True, True, True])  # subject 2 at days 2, 5, 8; subject 3 at 5, 8
    write(
        export, "labels/task.parquet", pa.concat_tables([pq.read_table(export / "labels/task.parquet"), more])
    )
    with pytest.raises(
        MedweaveError, match=r"task.parquet: row 2, field prediction_time: .*data.label_rows=last"
    ):
        prepared(export, tmp_path)
    first, first_codes, _ = prepared(export, tmp_path, label_rows="first")
    last, last_codes, _ = prepared(export, tmp_path, label_rows="last")
    assert len(first["subject_id"]) == len(last["subject_id"]) == 10
    assert first["target"][2] == 1.0 and (first_codes[2] > 0).sum() == 2  # day 2: the static event and A
    assert last["target"][3] == 1.0 and (last_codes[3] > 0).sum() == 3  # day 8: A, B, static; LATE not yet
    with pytest.raises(
        MedweaveError, match=r"data.label_rows=latest: expected one of \['error', 'first', 'last'\]"
    ):
        prepared(export, tmp_path, label_rows="latest")


def test_duplicate_label_rows(export, tmp_path):
    table = pq.read_table(export / "labels/task.parquet")
    write(export, "labels/task.parquet", pa.concat_tables([table, table.slice(3, 1)]))
    with pytest.raises(MedweaveError, match="task.parquet: row 10, field prediction_time: duplicate label"):
        prepared(export, tmp_path)
    subjects, _, _ = prepared(export, tmp_path, lenient=True)
    assert subjects["subject_id"].tolist() == list(range(10))


def test_sharded_labels_outside_the_cohort(export, tmp_path):
    outside = tmp_path / "aces_output"
    table = pq.read_table(export / "labels/task.parquet")
    write(outside, "task/0.parquet", table.slice(0, 5))
    write(outside, "task/1.parquet", table.slice(5).set_column(2, "boolean_value", pa.array([True] * 5)))
    subjects, _, out = prepared(export, tmp_path, labels_dir=str(outside))
    assert subjects["target"].tolist() == [1, 0, 1, 0, 1] + [1] * 5
    # The cache key follows the label files even though they are outside the cohort folder.
    write(outside, "task/1.parquet", table.slice(5))
    _, _, again = prepared(export, tmp_path, labels_dir=str(outside))
    assert again != out
    assert validate_cohort(export, labels_dir=str(outside)).ok
    with pytest.raises(MedweaveError, match=r"no labels for task 'tsak'.*Did you mean 'task'"):
        prepare(export, tmp_path / "cache", cfg(task="tsak", labels_dir=str(outside)))


def test_label_rows_with_nulls_and_unsplit_subjects_lenient(export, tmp_path, caplog):
    table = labels(list(range(10)) + [42], [5] * 11, [True, None] + [False] * 9)
    write(export, "labels/task.parquet", table)
    with pytest.raises(MedweaveError, match="task.parquet: row 1, field boolean_value: label is null"):
        prepared(export, tmp_path)
    with caplog.at_level(logging.WARNING):
        subjects, _, _ = prepared(export, tmp_path, lenient=True)
    assert subjects["subject_id"].tolist() == [0, *range(2, 10)]
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "row 10, field subject_id: labelled subject has no split" in messages and "skipped 1" in messages
    assert "42" not in messages  # rows are named by number, never by subject ID


def test_prediction_time_before_birth_is_a_warning(export, tmp_path, caplog):
    write(export, "data/late_birth.parquet", events([5], [7], [c.BIRTH_CODE]))
    with caplog.at_level(logging.WARNING):
        subjects, _, _ = prepared(export, tmp_path)
    assert len(subjects["subject_id"]) == 10
    assert any(
        "1 labelled subject(s) have a prediction_time before their MEDS_BIRTH" in r.getMessage()
        for r in caplog.records
    )
