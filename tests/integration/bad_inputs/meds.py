"""MEDS exports as they come broken: event shards, subject splits, label files, metadata.

Strict (the default) stops at the first fault with the file, the row (its number in that file)
or field, and what was expected. Lenient skips what can soundly be skipped: bad rows, a subject
listed in two splits (the whole subject), an unreadable extra shard. Not faults at all, and so not
here: events after prediction_time (normal in MEDS; left out, never leaked; see
tests/unit/test_prepare.py), a missing numeric_value or text_value column, absent
codes.parquet or dataset.json, custom split names (see tests/unit/test_meds_reader.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.errors import MedweaveError
from tests.integration.bad_inputs import Case, prepare_step

LABELS = "labels/cvd_onset_1y.parquet"
SHARD = "data/0.parquet"


LABELLED = 120  # the tiny sandbox cohort labels all its subjects in every task


def _lacks(n: int):
    """check_lenient: the prepared cache holds every labelled subject but ``n``."""

    def check(cache: Path) -> None:
        kept = len(np.load(cache / "subjects.npz")["subject_id"])
        assert kept == LABELLED - n, f"{kept} subjects prepared; expected {LABELLED} - {n}"

    return check


def _edit(cohort: Path, rel: str, change) -> None:
    """Rewrite one parquet file through pandas: ``change(frame)`` returns the new frame."""
    frame = change(pq.read_table(cohort / rel).to_pandas())
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), cohort / rel)


def _extra_shard(cohort: Path, change) -> None:
    """data/extra/1.parquet: the first 50 rows of the shard, changed, in a sub-folder."""
    table = pq.read_table(cohort / SHARD).slice(0, 50)
    (cohort / "data/extra").mkdir()
    pq.write_table(change(table), cohort / "data/extra/1.parquet")


def _validate_step(cohort: Path):
    """run(lenient) for faults only medweave-validate reads: its problems, raised as one error."""
    from medweave.data.validate import validate_cohort

    def run(lenient: bool):
        report = validate_cohort(cohort)
        if not report.ok:
            raise MedweaveError("; ".join(str(p) for p in report.problems))

    return run


# ------------------------------------------------------------------------------------- events
def truncated_shard(cohort, work):
    data = (cohort / SHARD).read_bytes()
    (cohort / "data/extra").mkdir()
    (cohort / "data/extra/1.parquet").write_bytes(data[: len(data) // 2])
    return prepare_step(cohort, work)


def time_as_strings(cohort, work):
    def change(table):
        text = [t.isoformat() if t else None for t in table.column("time").to_pylist()]
        text[7] = "last Tuesday"
        return table.set_column(1, "time", pa.array(text))

    _extra_shard(cohort, change)
    return prepare_step(cohort, work)


def code_as_integers(cohort, work):
    _extra_shard(cohort, lambda t: t.set_column(2, "code", pa.array(range(t.num_rows), pa.int64())))
    return prepare_step(cohort, work)


def subject_id_as_strings(cohort, work):
    _extra_shard(cohort, lambda t: t.set_column(0, "subject_id", t.column("subject_id").cast(pa.string())))
    return prepare_step(cohort, work)


def null_codes(cohort, work):
    def change(frame):
        frame.loc[[5, 9], "code"] = None
        return frame

    _edit(cohort, SHARD, change)
    return prepare_step(cohort, work)


def empty_data_folder(cohort, work):
    for path in (cohort / "data").rglob("*.parquet"):
        path.unlink()
    (cohort / "data/train").mkdir()  # sub-folders without shards are still empty
    return prepare_step(cohort, work)


# ------------------------------------------------------------------------------------- splits
def subject_in_two_splits(cohort, work):
    def change(frame):
        again = frame.iloc[[0]].copy()
        again["split"] = "held_out" if again.split.iloc[0] != "held_out" else "train"
        return pd.concat([frame, again])

    _edit(cohort, c.SUBJECT_SPLITS, change)
    return prepare_step(cohort, work)


def split_named_test(cohort, work):
    def change(frame):
        frame.loc[frame.split == "held_out", "split"] = "test"
        return frame

    _edit(cohort, c.SUBJECT_SPLITS, change)
    return prepare_step(cohort, work)


def labelled_subject_without_split(cohort, work):
    _edit(cohort, c.SUBJECT_SPLITS, lambda frame: frame.iloc[3:])
    return prepare_step(cohort, work)


# ------------------------------------------------------------------------------------- labels
def label_value_column_missing(cohort, work):
    pq.write_table(pq.read_table(cohort / LABELS).drop_columns(["boolean_value"]), cohort / LABELS)
    return prepare_step(cohort, work)


def label_values_null(cohort, work):
    def change(frame):
        frame["boolean_value"] = frame["boolean_value"].astype(object)
        frame.loc[[4, 11], "boolean_value"] = None
        return frame

    _edit(cohort, LABELS, change)
    return prepare_step(cohort, work)


def prediction_time_null(cohort, work):
    def change(frame):
        frame.loc[3, "prediction_time"] = None
        return frame

    _edit(cohort, LABELS, change)
    return prepare_step(cohort, work)


def duplicate_label_rows(cohort, work):
    table = pq.read_table(cohort / LABELS)
    pq.write_table(pa.concat_tables([table, table.slice(7, 1)]), cohort / LABELS)
    return prepare_step(cohort, work)


def several_prediction_times(cohort, work):
    table = pq.read_table(cohort / LABELS)
    later = table.slice(2, 1)
    when = pa.array([later.column("prediction_time")[0].as_py().replace(year=2030)], pa.timestamp("us"))
    pq.write_table(pa.concat_tables([table, later.set_column(1, "prediction_time", when)]), cohort / LABELS)
    return prepare_step(cohort, work)


def survival_negative_days(cohort, work):
    def change(frame):
        frame.loc[2, "float_value"] = -3.0
        frame["float_value"] = frame["float_value"].astype("float32")
        return frame

    _edit(cohort, "labels/cvd_survival.parquet", change)
    return prepare_step(cohort, work, task="cvd_survival", task_type="survival")


# ----------------------------------------------------------------------------------- metadata
def dataset_json_not_json(cohort, work):
    (cohort / c.DATASET_METADATA).write_text("{'dataset_name': 'export'")  # Python, not JSON
    return _validate_step(cohort)


def codes_parquet_garbage(cohort, work):
    (cohort / c.CODES_METADATA).write_bytes(b"code,description\nA,not parquet\n")
    return _validate_step(cohort)


CASES = [
    Case(
        "truncated-event-shard",
        truncated_shard,
        ("data/extra/1.parquet", "file", "expected a readable parquet file of MEDS events"),
        check_lenient=_lacks(0),
    ),
    Case(
        "event-time-as-strings",
        time_as_strings,
        ("data/extra/1.parquet", "column time", "has type string; expected timestamp[us]"),
        check_lenient=_lacks(0),
    ),
    Case(
        "event-code-as-integers",
        code_as_integers,
        ("data/extra/1.parquet", "column code", "has type int64; expected string"),
        check_lenient=_lacks(0),
    ),
    Case(
        "event-subject-id-as-strings",
        subject_id_as_strings,
        ("data/extra/1.parquet", "column subject_id", "expected int64"),
        check_lenient=_lacks(0),
    ),
    Case(
        "event-code-null", null_codes, (SHARD, "row 5, field code", "code is null"), check_lenient=_lacks(0)
    ),
    Case("empty-data-folder", empty_data_folder, ("has no event files", "data/**/*.parquet"), lenient=False),
    Case(
        "subject-in-two-splits",
        subject_in_two_splits,
        (c.SUBJECT_SPLITS, "field split", "subject listed in two splits"),
        check_lenient=_lacks(1),
    ),
    Case(
        "split-named-test",
        split_named_test,
        (c.SUBJECT_SPLITS, "field split", "'test' is not a MEDS split name", "did you mean 'held_out'"),
        lenient=False,
    ),
    Case(
        "labelled-subject-without-split",
        labelled_subject_without_split,
        (LABELS, "field subject_id", "labelled subject has no split"),
        check_lenient=_lacks(3),
    ),
    Case(
        "label-value-column-missing",
        label_value_column_missing,
        (LABELS, "column boolean_value missing", "binary task needs ['boolean_value']"),
        lenient=False,
    ),
    Case(
        "label-values-null",
        label_values_null,
        (LABELS, "row 4, field boolean_value", "label is null"),
        check_lenient=_lacks(2),
    ),
    Case(
        "label-prediction-time-null",
        prediction_time_null,
        (LABELS, "row 3, field prediction_time", "prediction_time is null"),
        check_lenient=_lacks(1),
    ),
    Case(
        "label-rows-duplicated",
        duplicate_label_rows,
        (LABELS, "field prediction_time", "duplicate label"),
        check_lenient=_lacks(0),
    ),
    Case(
        "several-prediction-times-per-subject",
        several_prediction_times,
        (LABELS, "field prediction_time", "another prediction_time", "data.label_rows=last"),
        lenient=False,  # which row to keep is a choice (data.label_rows), not a fault to skip
    ),
    Case(
        "survival-negative-days",
        survival_negative_days,
        ("labels/cvd_survival.parquet", "row 2, field float_value", "finite and >= 0"),
        check_lenient=_lacks(1),
    ),
    Case(
        "dataset-json-not-json",
        dataset_json_not_json,
        (c.DATASET_METADATA, "file", "not valid JSON"),
        lenient=False,
    ),
    Case(
        "codes-parquet-garbage",
        codes_parquet_garbage,
        (c.CODES_METADATA, "file", "not readable as parquet"),
        lenient=False,
    ),
]
