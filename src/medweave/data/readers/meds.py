"""MEDS parquet: events, subject splits, labels and the imaging index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.errors import MedweaveError


def read_parquet(path: Path, required: tuple[str, ...], columns=None) -> pa.Table:
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise MedweaveError(f"{path}: cannot be read as parquet ({err})") from None
    c.require_columns(table, required, path)
    return table


def event_files(root: Path) -> list[Path]:
    files = sorted((root / c.EVENTS_DIR).rglob("*.parquet"))
    if not files:
        raise MedweaveError(f"cohort '{root}' has no event files: expected {c.EVENTS_DIR}/**/*.parquet")
    return files


def read_events(root: Path, with_text: bool) -> pa.Table:
    """All event shards as one table (text_value only when notes are needed)."""
    cols = ["subject_id", "time", "code", "numeric_value"] + (["text_value"] if with_text else [])
    tables = []
    for path in event_files(root):
        schema = pq.read_schema(path)
        c.require_columns(schema, cols, path)
        tables.append(
            read_parquet(path, tuple(cols), columns=cols).cast(
                pa.schema([c.EVENTS_SCHEMA.field(n) for n in cols]), safe=False
            )
        )
    return pa.concat_tables(tables)


def read_splits(root: Path) -> pa.Table:
    path = c.require_file(root, c.SUBJECT_SPLITS, "train/tuning/held_out splits")
    table = read_parquet(path, c.REQUIRED_COLUMNS["splits"])
    bad = set(table.column("split").unique().to_pylist()) - set(c.SPLITS)
    if bad:
        raise MedweaveError(
            f"{path}: split values {sorted(map(str, bad))} are not MEDS splits {list(c.SPLITS)}"
        )
    ids = table.column("subject_id")
    if len(ids.unique()) != len(ids):
        raise MedweaveError(
            f"{path}: a subject_id appears more than once; each subject belongs to exactly one split"
        )
    return table


def read_labels(root: Path, task: str, values: tuple[str, ...] = ("boolean_value",)) -> pa.Table:
    """The label file of ``task``; ``values`` are the columns its task type reads (no nulls)."""
    path = c.label_path(root, task)
    if not path.exists():
        available = sorted(p.stem for p in (root / c.LABELS_DIR).glob("*.parquet"))
        raise MedweaveError(
            f"cohort '{root}' has no labels for task '{task}' ({path}); tasks available: {available}"
        )
    table = read_parquet(path, c.REQUIRED_COLUMNS["labels"])
    for name in values:
        if name not in table.column_names or table.column(name).null_count:
            raise MedweaveError(f"{path}: this task type needs a {name} column without nulls")
    ids = table.column("subject_id")
    if len(ids.unique()) != len(ids):
        raise MedweaveError(f"{path}: more than one prediction_time per subject is not supported yet")
    return table


def read_imaging_index(root: Path) -> pa.Table:
    path = c.require_file(root, c.IMAGING_INDEX, "the image modality")
    return read_parquet(path, c.REQUIRED_COLUMNS["imaging"])


def microseconds(column) -> np.ndarray:
    """Timestamps as int64 microseconds, whatever unit the file stored (pandas writes ns)."""
    return column.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy(zero_copy_only=False)
