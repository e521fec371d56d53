"""Cohorts derived from another for an audit: other splits, extra subjects, same files otherwise.

A derived cohort is a folder of symbolic links to the source's files (nothing large is copied),
with its own metadata/subject_splits.parquet and, when subjects are added, one more event file
and the task's label file extended. It holds subject IDs like any cohort: it stays in the audit's
own work folder and is removed when the audit ends.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.errors import MedweaveError

EXTRA_EVENTS = "audit_added_subjects.parquet"


def read_splits(root: Path) -> pa.Table:
    return pq.read_table(Path(root) / c.SUBJECT_SPLITS, columns=["subject_id", "split"])


def splits_table(subject_ids, splits) -> pa.Table:
    return pa.table(
        {"subject_id": np.asarray(subject_ids, np.int64), "split": np.asarray(splits, str)},
        schema=c.SPLITS_SCHEMA,
    )


def _mirror(src: Path, dst: Path, skip: set[Path]) -> None:
    """dst as real folders with a link to each file of src (except ``skip``, written by the caller)."""
    for folder, _, files in os.walk(src):
        here = Path(folder)
        out = dst / here.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for name in files:
            if here / name not in skip:
                os.symlink((here / name).resolve(), out / name)


def label_file(root: Path, task: str) -> Path:
    path = c.label_path(Path(root), task)
    if not path.is_file():
        raise MedweaveError(
            f"canaries are planted into {path}, which does not exist: the audit needs the task's "
            f"label file under labels/ (ACES tasks and data.labels_dir are not supported)"
        )
    return path


def derive_cohort(
    src: Path,
    dst: Path,
    splits: pa.Table,
    task: str | None = None,
    events: pa.Table | None = None,
    labels: pa.Table | None = None,
    only_added_labels: bool = False,
) -> Path:
    """Write the derived cohort at ``dst`` (replaced if it exists); return ``dst``. ``events`` and
    ``labels`` (MEDS columns; missing ones null) are the added subjects' rows, appended to the
    source's events and to the ``task``'s label file (or, ``only_added_labels``, in place of its
    rows: a cohort of the added subjects alone)."""
    src, dst = Path(src).resolve(), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    skip = {src / c.SUBJECT_SPLITS}
    if labels is not None:
        skip.add(label_file(src, task).resolve())
    _mirror(src, tmp, skip)
    pq.write_table(splits, tmp / c.SUBJECT_SPLITS)
    if events is not None:
        first = next(iter(sorted((src / c.EVENTS_DIR).rglob("*.parquet"))))
        pq.write_table(_conform(events, pq.read_schema(first)), tmp / c.EVENTS_DIR / EXTRA_EVENTS)
    if labels is not None:
        original = pq.read_table(label_file(src, task))
        added = _conform(labels, original.schema)
        joined = added if only_added_labels else pa.concat_tables([original, added])
        pq.write_table(joined, tmp / c.label_path(Path("."), task))
    tmp.rename(dst)
    return dst


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns, in order and type; absent columns null."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata())
