"""Count-based tabular features from MEDS events, one unit of shards at a time.

What a reviewer's baseline sees (as in EHRSHOT's count GBM and meds-tab): for each code of the
run's vocabulary (fitted on train, data/ehr/vocab.py), how often it occurs in each window before
the prediction time (``windows_days``, plus all history, where static events such as sex count
too), the last value of each code that carries numeric values, and age at the prediction time.

The cut is the one every neural arm gets (data/ehr/events.py ``before_prediction``): only events
strictly before prediction_time. Events are read unit by unit (shards that share no subject), so
memory holds one unit's events plus the sparse features built so far, never the whole cohort.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.ehr.events import before_prediction, read_unit
from medweave.data.ehr.shards import plan_units

AGE = "age_years"
DAYS_PER_YEAR = 365.25


@dataclass
class Features:
    """Subjects x features, rows in the order of the subject_ids they were built for.

    ``matrix``: CSR float32. A stored entry is a value; an absent one is a zero count or, for a
    last-value column, no value (``values`` marks those columns). ``names``: one per column.
    """

    matrix: sparse.csr_matrix
    names: list[str]
    values: np.ndarray  # bool [P]: last-value (and age) columns, where absent means unknown


def column_names(codes: list[str], valued: list[str], windows_days: list[int]) -> list[str]:
    counts = [f"count/{w}d/{code}" for w in windows_days for code in codes]
    counts += [f"count/all/{code}" for code in codes]
    return [AGE, *counts, *(f"last/{code}" for code in valued)]


def build_features(
    root: Path,
    subject_ids: np.ndarray,
    pred_time: np.ndarray,
    codes: list[str],
    valued: list[str],
    windows_days: list[int],
    lenient: bool = False,
) -> Features:
    """Features of the labelled subjects (sorted ``subject_ids``, ``pred_time`` in µs).

    ``codes``: the columns' codes (other codes are left out: a code few train subjects have
    would describe a person); ``valued``: those whose last value is a column.
    """
    windows_days = sorted(int(w) for w in windows_days)
    n, n_codes = len(subject_ids), len(codes)
    code_col = {name: i for i, name in enumerate(codes)}
    value_col = {name: i for i, name in enumerate(valued)}
    n_cols = 1 + n_codes * (len(windows_days) + 1) + len(valued)
    first_value = 1 + n_codes * (len(windows_days) + 1)
    bad = BadInput(lenient)
    rows_parts, cols_parts, data_parts = [], [], []
    units = plan_units(root)
    for files in tqdm(units, desc="tabular features", unit="shard", leave=False, disable=len(units) < 2):
        table = read_unit(files, False, bad, subject_ids)
        if table is None:
            continue
        kept = before_prediction(table, subject_ids, pred_time)
        del table
        names, index = _dictionary(kept.code)
        code_id = np.array([code_col.get(x, -1) for x in names], np.int64)[index]
        value_id = np.array([value_col.get(x, -1) for x in names], np.int64)[index]
        birth = np.array([x == c.BIRTH_CODE for x in names], bool)[index]
        row, days, value = kept.row.astype(np.int64), kept.days, kept.value
        # Age: the birth event's days before prediction time (the last one, if a subject has several).
        b = np.flatnonzero(birth & np.isfinite(days))
        if len(b):
            last_b = _last_of(row[b])
            rows_parts.append(row[b][last_b])
            cols_parts.append(np.zeros(len(last_b), np.int64))
            data_parts.append(days[b][last_b] / DAYS_PER_YEAR)
        known = code_id >= 0
        for k, w in enumerate([*windows_days, None]):
            inside = known if w is None else known & (days <= w)  # static events (NaN days): all only
            pairs, counts = np.unique(row[inside] * n_codes + code_id[inside], return_counts=True)
            rows_parts.append(pairs // n_codes)
            cols_parts.append(1 + k * n_codes + pairs % n_codes)
            data_parts.append(counts.astype(np.float64))
        # Last value: events are sorted by time within each subject, so the last of each pair.
        v = np.flatnonzero((value_id >= 0) & ~np.isnan(value))
        if len(v):
            pair = row[v] * max(len(valued), 1) + value_id[v]
            last = _last_of(pair)
            rows_parts.append(row[v][last])
            cols_parts.append(first_value + value_id[v][last])
            data_parts.append(value[v][last].astype(np.float64))
    if rows_parts:
        rows, cols = np.concatenate(rows_parts), np.concatenate(cols_parts)
        data = np.concatenate(data_parts).astype(np.float32)
    else:
        rows = cols = np.zeros(0, np.int64)
        data = np.zeros(0, np.float32)
    # (row, column) pairs are unique (subjects never span units), so nothing is summed and a
    # last value of exactly 0 stays a stored entry.
    matrix = sparse.csr_matrix((data, (rows, cols)), shape=(n, n_cols), dtype=np.float32)
    is_value = np.zeros(n_cols, bool)
    is_value[0] = True
    is_value[first_value:] = True
    return Features(matrix, column_names(codes, valued, windows_days), is_value)


def _dictionary(codes) -> tuple[list[str], np.ndarray]:
    """Distinct code names and each event's index among them."""
    encoded = pc.dictionary_encode(codes)
    encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
    return encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _last_of(keys: np.ndarray) -> np.ndarray:
    """Index of the last occurrence of each distinct key (in array order)."""
    _, first_reversed = np.unique(keys[::-1], return_index=True)
    return len(keys) - 1 - first_reversed
