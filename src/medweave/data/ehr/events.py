"""Which events of a shard reach the model: labelled subjects' events before their prediction time.

This is the leakage rule of the contract, applied to one table of events (one shard, or the few
shards that share subjects), so that no step ever holds the cohort's events at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.readers import meds

log = logging.getLogger(__name__)

NO_TIME = np.iinfo(np.int64).max  # static events sort last, so truncation never drops them


@dataclass
class KeptEvents:
    """Events strictly before prediction_time, sorted by (row, time) with static events last.

    ``row`` indexes the labelled subjects (sorted subject_ids); ``days`` is days before the
    prediction time (NaN for static events). ``later``: events left out at or after prediction
    time; ``born_later``: rows whose birth event comes at or after their prediction time.
    """

    row: np.ndarray
    code: pa.ChunkedArray | pa.Array
    value: np.ndarray
    days: np.ndarray
    text: pa.ChunkedArray | pa.Array | None
    later: int
    born_later: np.ndarray


def before_prediction(
    table: pa.Table, subject_ids: np.ndarray, pred_time: np.ndarray, is_birth: np.ndarray | None = None
) -> KeptEvents:
    """The events of ``table`` that may reach the model (see the module docstring).

    Static events (null time, e.g. sex) are kept, placed last, with days = NaN. MEDS allows events
    at prediction_time; medweave leaves them out too. Ties in time keep the table's row order.
    ``is_birth`` marks the birth events where ``code`` holds indices rather than names.
    """
    row, known = _rows_of(table.column("subject_id").to_numpy(), subject_ids)
    static_all = table.column("time").is_null().to_numpy(zero_copy_only=False)
    time = table.column("time").cast(pa.int64()).fill_null(NO_TIME).to_numpy()
    later = known & ~static_all & (time >= pred_time[row])
    keep = known & (static_all | (time < pred_time[row]))  # no temporal leakage
    if is_birth is None:
        is_birth = pc.equal(table.column("code"), c.BIRTH_CODE).to_numpy(zero_copy_only=False)
    idx = _by_subject_then_time(np.flatnonzero(keep), row, time, static_all)
    static = static_all[idx]
    days = np.where(static, np.nan, (pred_time[row[idx]] - time[idx]) / 8.64e10)
    take = pa.array(idx)
    return KeptEvents(
        row=row[idx],
        code=table.column("code").take(take),
        value=table.column("numeric_value").take(take).to_numpy(zero_copy_only=False),
        days=days.astype(np.float32),
        text=table.column("text_value").take(take) if "text_value" in table.column_names else None,
        later=int(later.sum()),
        born_later=np.unique(row[later & is_birth]),
    )


def _rows_of(sid: np.ndarray, subject_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each event's row among the sorted ``subject_ids``, and whether it is one of them. Looked
    up once per run of equal ids (a shard lists each subject's events together)."""
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.zeros(0, np.int64)
    run_ids = sid[starts]
    run_row = np.clip(np.searchsorted(subject_ids, run_ids), 0, max(len(subject_ids) - 1, 0))
    run_known = subject_ids[run_row] == run_ids if len(subject_ids) else np.zeros(len(starts), bool)
    lengths = np.diff(np.r_[starts, len(sid)])
    return np.repeat(run_row, lengths), np.repeat(run_known, lengths)


def _by_subject_then_time(idx: np.ndarray, row: np.ndarray, time: np.ndarray, static: np.ndarray):
    """``idx`` ordered by (row, time), ties in table order, static events last: as a stable
    lexsort, but one stable sort by (row, static) suffices where each subject's timed events are
    already in time order (MEDS shards are sorted so), which costs a fraction of it."""
    order = idx[np.argsort(row[idx] * 2 + static[idx], kind="stable")]
    r, t = row[order], time[order]
    if not ((r[1:] == r[:-1]) & (t[1:] < t[:-1])).any():
        return order
    return idx[np.lexsort((time[idx], row[idx]))]


def report(later: int, born_later: int) -> None:
    """One warning and one note for the whole cohort, however many shards were read."""
    if born_later:
        log.warning(
            "%d labelled subject(s) have a prediction_time before their %s event; their samples keep "
            "only static events (check the labels)",
            born_later,
            c.BIRTH_CODE,
        )
    if later:
        log.info("left out %d event(s) at or after prediction_time (no leakage)", later)


def read_unit(
    files: list[Path], with_text: bool, bad: BadInput, subject_ids: np.ndarray | None = None
) -> pa.Table | None:
    """The events of one unit of work (shards that share no subject with any other shard), in
    file order, of ``subject_ids`` only if given; None if lenient mode skipped every file."""
    tables = [meds.read_event_shard(f, with_text, bad, subject_ids) for f in files]
    tables = [t for t in tables if t is not None]
    return pa.concat_tables(tables) if tables else None


def notes_per_subject(
    units: list[list[Path]], subject_ids: np.ndarray, pred_time: np.ndarray, bad: BadInput
) -> list[str]:
    """Each labelled subject's notes before prediction time, oldest first, joined into one
    document ("" for none). Read unit by unit: only the notes are kept between units."""
    per_subject: list[list[str]] = [[] for _ in subject_ids]
    for files in units:
        table = read_unit(files, True, bad, subject_ids)
        if table is None:
            continue
        is_note = pc.starts_with(table.column("code"), c.NOTE_PREFIX)
        table = table.filter(pc.and_(is_note, pc.invert(pc.is_null(table.column("text_value")))))
        kept = before_prediction(table, subject_ids, pred_time)
        for r, text in zip(kept.row.tolist(), kept.text.to_pylist(), strict=True):
            per_subject[r].append(text)
    return [" ".join(texts) for texts in per_subject]
