"""Check a cohort folder against the contract and report every problem, not only the first.

Used by ``medweave-validate``: on a sandbox cohort, an import, or a real MEDS export, before
anyone spends compute on it. Each problem names the file, the row or field, and what was expected.
Subject IDs are never printed: rows are given by their number in the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.data.readers import meds


@dataclass(frozen=True)
class Problem:
    """One fault. Rows (and VCF sample columns) are counted from 0, as pyarrow and pandas do."""

    file: str  # relative to the cohort root
    where: str  # "row 17, field code", "column code", ...
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.message}"


@dataclass
class Report:
    root: Path
    problems: list[Problem]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems


class _Collector:
    def __init__(self, root: Path):
        self.root, self.problems = root, []

    def add(self, path: Path | str, where: str, message: str) -> None:
        path = Path(path)  # relative to the cohort; as it is when outside (e.g. data.labels_dir)
        rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)
        self.problems.append(Problem(rel, where, message))

    def read(self, path: Path, required: dict[str, pa.DataType]) -> pa.Table | None:
        """The table if it is readable and has the required columns with compatible types."""
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            self.add(path, "file", f"not readable as parquet ({err})")
            return None
        ok = True
        for name, dtype in required.items():
            if name not in table.column_names:
                self.add(path, f"column {name}", f"missing; expected {dtype}")
                ok = False
            elif not _compatible(table.schema.field(name).type, dtype):
                self.add(
                    path, f"column {name}", f"has type {table.schema.field(name).type}; expected {dtype}"
                )
                ok = False
        return table if ok else None

    def first_rows(self, path: Path, mask: np.ndarray, message: str, field: str) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            self.add(path, f"row {rows[0]}, field {field}", message + more)


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_string(expected) or pa.types.is_large_string(expected):
        return (
            pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_dictionary(actual)
        )
    return actual == expected


def validate_cohort(
    root: str | Path,
    labels_dir: str | None = None,
    tasks: dict[str, str] | None = None,
    aces_task: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Report:
    """Every problem of the cohort at ``root``; ``labels_dir`` as data.labels_dir (None: labels/).

    ``tasks`` (name -> type, e.g. from ``task=cvd_survival``) must each have a label file whose
    columns that type reads; tasks that dataset.json declares are checked against their type too.
    ``aces_task`` (an ACES task file, ``task=<file.yaml>``) brings its own labels: ACES computes
    them as medweave-train does (cached under ``cache_dir``, which train then reuses; None: a
    temporary folder) and they are checked in place of labels/, which the cohort need not have."""
    root = Path(root).expanduser().resolve()
    col = _Collector(root)
    counts: dict[str, int] = {}
    if not root.is_dir():
        col.add(str(root), "folder", "does not exist or is not a folder")
        return Report(root, col.problems, counts)

    meta = root / c.DATASET_METADATA
    if meta.exists():  # optional for medweave (MEDS ETLs write one, sometimes only "{}")
        try:
            if not isinstance(json.loads(meta.read_text()), dict):
                col.add(meta, "file", "expected a JSON object (MEDS dataset metadata)")
        except ValueError as err:
            col.add(meta, "file", f"not valid JSON ({err})")
    if (root / c.CODES_METADATA).exists():  # optional, and may list only some codes (MEDS)
        col.read(root / c.CODES_METADATA, {"code": pa.string()})

    split_ids = _check_splits(root, col, counts)
    _check_events(root, col, counts, split_ids)
    if aces_task is not None:
        _check_aces_labels(root, col, counts, split_ids, aces_task, labels_dir, cache_dir)
    else:
        types = {**_task_types(meta), **(tasks or {})}
        _check_labels(root, col, counts, split_ids, types, labels_dir, tasks)
    if (root / c.IMAGING_DIR).exists():
        _check_imaging(root, col, counts, split_ids)
    if (root / "genomics").exists():
        _check_genomics(root, col, counts, split_ids)
    return Report(root, col.problems, counts)


def _task_types(meta: Path) -> dict[str, str]:
    """Task name -> type ("binary", "survival", ...) where dataset.json declares them."""
    try:
        tasks = json.loads(meta.read_text()).get("medweave", {}).get("tasks", {})
        return {name: str(spec.get("type")) for name, spec in tasks.items() if isinstance(spec, dict)}
    except (OSError, ValueError, AttributeError):
        return {}


def _known(ids: np.ndarray, split_ids: np.ndarray | None) -> np.ndarray:
    return np.ones(len(ids), bool) if split_ids is None else np.isin(ids, split_ids)


def _check_splits(root, col, counts) -> np.ndarray | None:
    path = root / c.SUBJECT_SPLITS
    if not path.exists():
        col.add(path, "file", "missing; expected subject_id and split (train, tuning, held_out)")
        return None
    table = col.read(path, {"subject_id": pa.int64(), "split": pa.string()})
    if table is None:
        return None
    ids = table.column("subject_id").to_numpy(zero_copy_only=False)
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    null = table.column("split").is_null().to_numpy(zero_copy_only=False)
    col.first_rows(path, null, "split is null", "split")
    # MEDS allows custom splits (their subjects are not used); a MEDS split misspelt is a problem.
    for name in sorted({s for s in split.tolist() if s is not None} - set(c.SPLITS)):
        meant = meds.misnamed_split(name)
        if meant:
            message = f"'{name}' is not a MEDS split; did you mean '{meant}'?"
            col.first_rows(path, split == name, message, "split")
    custom = ~np.isin(split, [*c.SPLITS, None])
    if custom.any():
        counts["subjects_in_custom_splits"] = len(np.unique(ids[custom]))
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), bool)
    dup[first] = False
    col.first_rows(
        path, dup, "subject_id already listed: a subject belongs to exactly one split", "subject_id"
    )
    counts["subjects"] = len(np.unique(ids))
    return np.unique(ids)


def _check_events(root, col, counts, split_ids) -> None:
    files = sorted((root / c.EVENTS_DIR).rglob("*.parquet"))
    if not files:
        col.add(root / c.EVENTS_DIR, "folder", "no event files; expected MEDS events in data/**/*.parquet")
        return
    # numeric_value and text_value are optional in MEDS; any timestamp unit or zone is read.
    required = {f.name: f.type for f in c.EVENTS_SCHEMA if f.name in ("subject_id", "time", "code")}
    optional = {"numeric_value": (pa.types.is_floating, pa.types.is_integer, pa.types.is_null)}
    optional["text_value"] = (pa.types.is_string, pa.types.is_large_string, pa.types.is_null)
    counts["events"] = 0
    for path in files:
        table = col.read(path, required)
        if table is None:
            continue
        for name, accepted in optional.items():
            kind = table.schema.field(name).type if name in table.column_names else None
            if kind is not None and not any(test(kind) for test in accepted):
                expected = c.EVENTS_SCHEMA.field(name).type
                col.add(path, f"column {name}", f"has type {kind}; expected {expected}")
        counts["events"] += table.num_rows
        ids = table.column("subject_id")
        col.first_rows(path, ids.is_null().to_numpy(zero_copy_only=False), "subject_id is null", "subject_id")
        col.first_rows(
            path, table.column("code").is_null().to_numpy(zero_copy_only=False), "code is null", "code"
        )
        known = _known(ids.fill_null(-1).to_numpy(), split_ids)
        col.first_rows(path, ~known, "subject has no split in metadata/subject_splits.parquet", "subject_id")
        if "text_value" in table.column_names:
            notes = pc.starts_with(table.column("code"), c.NOTE_PREFIX).fill_null(False)
            empty = pc.and_(notes, table.column("text_value").is_null()).to_numpy(zero_copy_only=False)
            col.first_rows(path, empty, f"{c.NOTE_PREFIX} event without text_value", "text_value")


def _check_labels(
    root, col, counts, split_ids, task_types: dict[str, str], labels_dir=None, asked=None
) -> None:
    """Label files: <base>/<task>.parquet or <base>/<task>/**/*.parquet shards (ACES writes those).
    Each task of known type must have the columns its type reads; a task asked for by name must
    have a label file (the message lists the near names)."""
    base = meds.labels_base(root, labels_dir)
    singles = sorted(base.glob("*.parquet"))
    folders = sorted(p for p in base.glob("*") if p.is_dir() and any(p.rglob("*.parquet")))
    files = singles + [f for folder in folders for f in sorted(folder.rglob("*.parquet"))]
    available = [p.stem for p in singles] + [p.name for p in folders]
    for task in asked or {}:
        if task not in available:
            col.add(
                base,
                f"task {task}",
                f"no label file {task}.parquet or {task}/*.parquet; tasks here: {sorted(available)}."
                + c.did_you_mean(task, available),
            )
    if not files:
        col.add(base, "folder", "no label files; expected <task>.parquet or <task>/*.parquet (MEDS labels)")
        return
    value_columns = meds.LABEL_VALUE_COLUMNS
    counts["tasks"] = len(singles) + len(folders)
    for path in files:
        table = col.read(path, {"subject_id": pa.int64(), "prediction_time": pa.timestamp("us")})
        if table is None:
            continue
        present = [v for v in value_columns if v in table.column_names]
        if not present:
            col.add(path, "columns", f"no label value column; expected one of {list(value_columns)}")
        else:
            empty = np.all(
                [table.column(v).is_null().to_numpy(zero_copy_only=False) for v in present], axis=0
            )
            col.first_rows(path, empty, "label has no value", "/".join(present))
        when = table.column("prediction_time").is_null().to_numpy(zero_copy_only=False)
        col.first_rows(path, when, "prediction_time is null", "prediction_time")
        ids = table.column("subject_id").fill_null(-1).to_numpy()
        col.first_rows(path, ~_known(ids, split_ids), "subject has no split", "subject_id")
        task = path.stem if path.parent == base else path.relative_to(base).parts[0]
        if task in task_types and _has_type_columns(path, table, task_types[task], col):
            if task_types[task] == "survival":
                _check_survival(path, table, col)


def _check_aces_labels(root, col, counts, split_ids, task_file, labels_dir, cache_dir) -> None:
    """The labels the ACES task file gives this cohort, checked as a label file of its type; a
    cohort whose events failed is not labelled (ACES would only restate those faults)."""
    import tempfile

    from medweave.data import aces
    from medweave.data.prepare import cohort_fingerprint
    from medweave.errors import MedweaveError

    try:
        task = aces.read_task_file(task_file)
    except MedweaveError as err:
        col.add(str(task_file), "task file", str(err).replace(f"{Path(task_file).resolve()}: ", ""))
        return
    if labels_dir:
        col.add(
            str(task.path),
            "task",
            f"computes its labels; data.labels_dir={labels_dir} names label files too: keep one",
        )
        return
    if col.problems:
        return
    with tempfile.TemporaryDirectory(prefix="medweave-validate-") as tmp:
        try:
            folder = aces.labels_dir(task.path, root, Path(cache_dir or tmp), cohort_fingerprint(root))
        except MedweaveError as err:
            col.add(str(task.path), "labels", str(err).replace(f"{task.path}: ", ""))
            return
        _check_labels(
            root, col, counts, split_ids, {task.name: task.type}, str(folder), {task.name: task.type}
        )
        table = pq.read_table(folder / f"{task.name}.parquet", columns=["boolean_value"])
    positive = int(pc.sum(table.column("boolean_value").fill_null(False)).as_py() or 0)
    counts[f"{task.name} labels"] = table.num_rows
    counts[f"{task.name} positive"] = positive


def _has_type_columns(path, table, task_type: str, col) -> bool:
    """The value columns the task's type reads (contract.LABEL_VALUES) are there and filled."""
    needed = c.LABEL_VALUES.get(task_type)
    if needed is None:
        col.add(
            path, "task type", f"'{task_type}' is not a task type; expected one of {list(c.LABEL_VALUES)}"
        )
        return False
    found = [v for v in meds.LABEL_VALUE_COLUMNS if v in table.column_names]
    missing = [v for v in needed if v not in table.column_names]
    if missing:
        col.add(
            path,
            f"column {', '.join(missing)}",
            f"missing; a {task_type} task reads {list(needed)} (this file has {found or 'no value column'})",
        )
        return False
    for name in needed:
        col.first_rows(
            path,
            table.column(name).is_null().to_numpy(zero_copy_only=False),
            f"label is null; a {task_type} task reads {name} in every row",
            name,
        )
    return True


def _check_survival(path, table, col) -> None:
    """Survival labels (columns checked by _has_type_columns): days to event or censoring in
    float_value finite and >= 0."""
    days = table.column("float_value").to_numpy(zero_copy_only=False).astype(float)
    nulls = table.column("float_value").is_null().to_numpy(zero_copy_only=False)
    bad = (~np.isfinite(days) | (days < 0)) & ~nulls  # nulls are reported as such
    col.first_rows(path, bad, "days to event or censoring must be finite and >= 0 (not NaN)", "float_value")


def _check_imaging(root, col, counts, split_ids) -> None:
    """Index columns and modality values; every path: 2D DICOM files must be grayscale images with
    pixel data (any transfer syntax: headers only, nothing decoded), series folders one evenly
    spaced stack, NIfTI files 3D (readers/dicom.py, readers/volume.py say what each accepts)."""
    from medweave.data.readers import dicom, volume
    from medweave.errors import MedweaveError

    path = root / c.IMAGING_INDEX
    if not path.exists():
        col.add(path, "file", "missing; imaging/ needs an index of subject_id, time, path")
        return
    table = col.read(path, {"subject_id": pa.int64(), "time": pa.timestamp("us"), "path": pa.string()})
    if table is None:
        return
    counts["images"] = table.num_rows
    n = table.num_rows
    ids = table.column("subject_id").fill_null(-1).to_numpy()
    col.first_rows(path, ~_known(ids, split_ids), "subject has no split", "subject_id")
    if "modality" in table.column_names:
        modality = np.array(table.column("modality").cast(pa.string()).to_pylist(), dtype=object)
        unknown = ~np.isin(modality, [*c.IMAGING_MODALITIES, None])
        col.first_rows(
            path, unknown, f"modality is not one of {list(c.IMAGING_MODALITIES)} (or null)", "modality"
        )
    faults: dict[str, list] = {"missing": [], "dicom": [], "series": [], "nifti": []}

    def reason(err: Exception) -> str:
        return str(err).replace(f"{root}/", "")

    for row, rel in enumerate(table.column("path").to_pylist()):
        file = root / c.IMAGING_DIR / (rel or "")
        if not rel or not file.exists():
            faults["missing"].append((row, ""))
            continue
        try:
            if volume.is_nifti(file.name):
                kind = "nifti"
                volume.check_volume(file)
            elif file.is_dir():
                kind = "series"
                volume.check_volume(file)
            else:
                kind = "dicom"
                dicom.read_header(file)
        except MedweaveError as err:
            faults[kind].append((row, reason(err)))
    messages = {
        "missing": "image file does not exist under imaging/",
        "dicom": "not a readable DICOM image (or series)",
        "series": "not a readable DICOM image (or series)",
        "nifti": "not a readable NIfTI volume",
    }
    for kind, rows in faults.items():
        if rows:
            first = f" (first: {rows[0][1]})" if rows[0][1] else ""
            col.first_rows(path, np.isin(np.arange(n), [r for r, _ in rows]), messages[kind] + first, "path")


def _check_genomics(root, col, counts, split_ids) -> None:
    """VCF/BCF headers and indexes, the sample map, expression and embeddings (data/genomics.py)."""
    from medweave.data.genomics import check_genomics

    check_genomics(root, col.add, counts, split_ids)
