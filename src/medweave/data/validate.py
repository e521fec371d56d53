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
        rel = Path(path).relative_to(self.root).as_posix() if Path(path).is_absolute() else str(path)
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


def validate_cohort(root: str | Path) -> Report:
    root = Path(root).expanduser().resolve()
    col = _Collector(root)
    counts: dict[str, int] = {}
    if not root.is_dir():
        col.add(str(root), "folder", "does not exist or is not a folder")
        return Report(root, col.problems, counts)

    meta = root / c.DATASET_METADATA
    if not meta.exists():
        col.add(meta, "file", "missing; expected MEDS dataset metadata (JSON)")
    else:
        try:
            json.loads(meta.read_text())
        except ValueError as err:
            col.add(meta, "file", f"not valid JSON ({err})")

    split_ids = _check_splits(root, col, counts)
    _check_events(root, col, counts, split_ids)
    _check_labels(root, col, counts, split_ids, _task_types(meta))
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
    col.first_rows(path, ~np.isin(split, c.SPLITS), f"split is not one of {list(c.SPLITS)}", "split")
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
    required = {f.name: f.type for f in c.EVENTS_SCHEMA if f.name != "text_value"}
    counts["events"] = 0
    for path in files:
        table = col.read(path, required)
        if table is None:
            continue
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


def _check_labels(root, col, counts, split_ids, task_types: dict[str, str]) -> None:
    files = sorted((root / c.LABELS_DIR).glob("*.parquet"))
    if not files:
        col.add(root / c.LABELS_DIR, "folder", "no label files; expected labels/<task>.parquet")
        return
    value_columns = ("boolean_value", "integer_value", "float_value", "categorical_value")
    counts["tasks"] = len(files)
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
        if task_types.get(path.stem) == "survival":
            _check_survival(path, table, col)


def _check_survival(path, table, col) -> None:
    """Survival labels: days to event or censoring in float_value, whether it was seen in boolean_value."""
    for name in ("float_value", "boolean_value"):
        if name not in table.column_names:
            col.add(path, f"column {name}", "missing; a survival label needs float_value and boolean_value")
            return
        col.first_rows(
            path, table.column(name).is_null().to_numpy(zero_copy_only=False), "survival label is null", name
        )
    days = table.column("float_value").to_numpy(zero_copy_only=False).astype(float)
    nulls = table.column("float_value").is_null().to_numpy(zero_copy_only=False)
    bad = (~np.isfinite(days) | (days < 0)) & ~nulls  # nulls are reported above
    col.first_rows(path, bad, "days to event or censoring must be finite and >= 0 (not NaN)", "float_value")


def _check_imaging(root, col, counts, split_ids) -> None:
    import pydicom

    path = root / c.IMAGING_INDEX
    if not path.exists():
        col.add(path, "file", "missing; imaging/ needs an index of subject_id, time, path")
        return
    table = col.read(path, {"subject_id": pa.int64(), "time": pa.timestamp("us"), "path": pa.string()})
    if table is None:
        return
    counts["images"] = table.num_rows
    ids = table.column("subject_id").fill_null(-1).to_numpy()
    col.first_rows(path, ~_known(ids, split_ids), "subject has no split", "subject_id")
    missing, unreadable, bad_nifti = [], [], []
    for row, rel in enumerate(table.column("path").to_pylist()):
        file = root / c.IMAGING_DIR / (rel or "")
        if not rel or not file.exists():
            missing.append(row)
        elif file.name.lower().endswith((".nii", ".nii.gz")):
            if not _readable_nifti(file):
                bad_nifti.append(row)
        elif file.is_dir():  # a DICOM series: every slice must be a readable image
            slices = [p for p in file.iterdir() if p.is_file()]
            if not slices or not all(_readable_dicom(p, pydicom) for p in slices):
                unreadable.append(row)
        elif not _readable_dicom(file, pydicom):
            unreadable.append(row)
    n = table.num_rows
    col.first_rows(path, np.isin(np.arange(n), missing), "image file does not exist under imaging/", "path")
    col.first_rows(path, np.isin(np.arange(n), unreadable), "not a readable DICOM image (or series)", "path")
    col.first_rows(path, np.isin(np.arange(n), bad_nifti), "not a readable NIfTI volume", "path")


def _readable_dicom(file: Path, pydicom) -> bool:
    try:
        return "Rows" in pydicom.dcmread(file, stop_before_pixels=True)
    except Exception:  # truncated files raise many types; each is one reported row
        return False


def _readable_nifti(file: Path) -> bool:
    import nibabel as nib

    try:
        return len(nib.load(str(file)).shape) >= 3
    except Exception:  # nibabel raises several types for damaged headers
        return False


def _check_genomics(root, col, counts, split_ids) -> None:
    import pysam

    if (root / c.EXPRESSION).exists():
        _check_expression(root / c.EXPRESSION, col, counts, split_ids)
    path = root / c.VARIANTS_VCF
    if not path.exists():
        return
    try:
        samples = list(pysam.VariantFile(str(path)).header.samples)
    except (OSError, ValueError) as err:
        col.add(path, "header", f"not a readable VCF ({err})")
        return
    if not Path(str(path) + ".tbi").exists() and not Path(str(path) + ".csi").exists():
        col.add(path, "index", "no .tbi or .csi index beside the VCF (make one with tabix -p vcf)")
    counts["genomes"] = len(samples)
    bad = [i for i, s in enumerate(samples) if not s.isdigit()]
    if bad:
        col.add(path, f"sample {bad[0]}", f"{len(bad)} sample name(s) are not subject_ids (integers)")
    ids = np.array([int(s) if s.isdigit() else -1 for s in samples], np.int64)
    unknown = np.flatnonzero(~_known(ids, split_ids) & (ids >= 0))
    if len(unknown):
        col.add(path, f"sample {unknown[0]}", f"{len(unknown)} sample(s) match no subject in the splits")


def _check_expression(path, col, counts, split_ids) -> None:
    table = col.read(path, {"subject_id": pa.int64()})
    if table is None:
        return
    counts["expression_profiles"] = table.num_rows
    ids = table.column("subject_id").fill_null(-1).to_numpy()
    col.first_rows(path, ~_known(ids, split_ids), "subject has no split", "subject_id")
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(len(ids), bool)
    dup[first] = False
    col.first_rows(path, dup, "subject_id already listed: one expression profile per subject", "subject_id")
    for field in table.schema:
        if field.name != "subject_id" and not (
            pa.types.is_floating(field.type) or pa.types.is_integer(field.type)
        ):
            col.add(
                path, f"column {field.name}", f"has type {field.type}; expected numeric expression values"
            )
