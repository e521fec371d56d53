"""Expression matrices from parquet, in either orientation, through pyarrow.

    subjects x genes: a ``subject_id`` (or ``sample``) column + one numeric column per gene
    genes x subjects: a ``gene`` (or ``gene_id``) column + one numeric column per subject,
                      named by subject_id (or by sample name, mapped through the sample map)

``orientation="auto"`` picks by which key column is there. Values stay as written (counts, TPM,
log values); normalisation is the cache's job (data/genomics.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data.bad_input import BadInput
from medweave.errors import MedweaveError

ORIENTATIONS = ("auto", "subjects_by_genes", "genes_by_subjects")
SUBJECT_KEYS = ("subject_id", "sample")
GENE_KEYS = ("gene", "gene_id")


@dataclass
class Expression:
    subjects: np.ndarray  # int64 [n]
    genes: list[str]
    values: np.ndarray  # float32 [n, genes]; nan = not measured


def _numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_floating(dtype) or pa.types.is_integer(dtype)


def orientation_of(path: Path, names: list[str], orientation: str) -> str:
    if orientation not in ORIENTATIONS:
        raise MedweaveError(
            f"data.genomics.expression_orientation={orientation}: expected one of {list(ORIENTATIONS)}"
        )
    if orientation != "auto":
        return orientation
    if any(k in names for k in SUBJECT_KEYS):
        return "subjects_by_genes"
    if any(k in names for k in GENE_KEYS):
        return "genes_by_subjects"
    raise MedweaveError(  # column names are not printed: in genes x subjects they are subjects
        f"{path}: no {' or '.join(SUBJECT_KEYS)} column (subjects x genes) and no "
        f"{' or '.join(GENE_KEYS)} column (genes x subjects) among its {len(names)} columns"
    )


def read_expression(
    path: Path,
    to_subject: Callable[[str], int | None],
    orientation: str = "auto",
    bad: BadInput | None = None,
) -> Expression:
    """Subjects x genes, whatever the file's orientation.

    ``to_subject`` turns a sample name or subject_id text into a subject_id (None: unknown).
    Non-numeric value columns and subjects (or genes) listed twice are faults; lenient mode
    leaves them out.
    """
    bad = bad or BadInput()
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise MedweaveError(f"{path}: not readable as parquet ({err})") from None
    kind = orientation_of(path, table.column_names, orientation)
    keys = SUBJECT_KEYS if kind == "subjects_by_genes" else GENE_KEYS
    key = next((k for k in keys if k in table.column_names), None)
    if key is None:
        raise MedweaveError(
            f"{path}: expected a {' or '.join(keys)} column for {kind} among its {table.num_columns} columns"
        )
    value_cols = []
    for position, f in enumerate(table.schema):
        if f.name == key:
            continue
        if _numeric(f.type):
            value_cols.append(f.name)
        else:
            # genes x subjects: the column names are sample names (often subject IDs): by number
            name = f.name if kind == "subjects_by_genes" else f"number {position}"
            bad.fault(path, f"column {name}", f"has type {f.type}; expected numeric expression values")
    row_keys = [str(k) for k in table.column(key).to_pylist()]
    if not value_cols:
        raise MedweaveError(f"{path}: no numeric value column; expected expression values")
    values = np.column_stack(
        [table.column(n).cast(pa.float32()).fill_null(np.nan).to_numpy() for n in value_cols]
    ).astype(np.float32)
    if kind == "subjects_by_genes":
        names, genes = row_keys, value_cols
    else:
        names, genes, values = value_cols, row_keys, values.T
        keep = _unique(path, genes, "gene", bad, where="row")
        genes, values = [g for g, k in zip(genes, keep, strict=True) if k], values[:, keep]
    subjects = np.array([-1 if (s := to_subject(n)) is None else s for n in names], np.int64)
    where = "row" if kind == "subjects_by_genes" else "column"
    unknown = np.flatnonzero(subjects < 0)
    if len(unknown):
        bad.fault(
            path,
            f"{where} {unknown[0]}, field {key if where == 'row' else 'name'}",
            "names no subject (expected a subject_id, or a sample in the sample map)",
            count=len(unknown),
        )
    keep = (subjects >= 0) & _unique(path, subjects.tolist(), key, bad, where=where)
    return Expression(subjects[keep], genes, np.ascontiguousarray(values[keep]))


def _unique(path: Path, keys: list, what: str, bad: BadInput, where: str) -> np.ndarray:
    """Rows whose key is listed once; a key listed twice is a fault and all its rows are left out."""
    arr = np.asarray(keys, dtype=object)
    _, inverse, counts = np.unique(arr.astype(str), return_inverse=True, return_counts=True)
    twice = counts[inverse] > 1
    rows = np.flatnonzero(twice)
    if len(rows):
        bad.fault(
            path,
            f"{where} {rows[1]}, field {what}",
            f"{what} already listed; expected one expression profile per {what}",
            count=len(rows),
        )
    return ~twice
