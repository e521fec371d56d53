"""The map stage: each unit of event shards becomes one EHR cache shard, in bounded memory.

A unit is one ``data/`` shard (MEDS shards by subject), or the few shards that share subjects
(a layout MEDS discourages but exports produce), so that each subject's events are seen
together. A unit's cache shard is a pure function of its files, the labels and the settings:
the same bytes whatever the number of workers, written to a temporary folder and renamed into
place, so a crash leaves nothing half-written and a rerun reuses every shard already finished.
It holds the last ``max_events`` code events of each labelled subject, the birth event always
among them (it alone carries age, and a long history would push it out; codes as a shard-local
dictionary, raw values, days before prediction time) and the partial counts the vocabulary is
fitted from (vocab.py); fitted vocabularies are applied when batches are read (cache.py), so one
cache shard serves training and every evaluation with a checkpoint's vocabulary.

Units run in worker processes (``workers``) on one machine, and a Slurm array splits them
between jobs (``part=(k, n)``: every n-th unit from the k-th); the last job, or any later run,
finds them done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.ehr.events import before_prediction, read_unit
from medweave.data.readers import meds
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

SHARD_FORMAT = 2  # bump when a cache shard's content changes (2: the birth event survives truncation)
DONE = "info.json"  # written last: a folder without it is never used
# counts.npy columns: per shard-local code, over train subjects only
COUNT_COLUMNS = ("subjects", "valued_subjects", "valued_events", "value_sum", "value_square_sum")
FLAGS = 1 << 24  # (subject, code) flags held at once when counting distinct subjects per code


@dataclass(frozen=True)
class Labelled:
    """The labelled subjects every shard is cut by: sorted ids, prediction times, train mask."""

    subject_ids: np.ndarray
    pred_time: np.ndarray
    train: np.ndarray

    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for a in (self.subject_ids, self.pred_time, self.train):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


# ------------------------------------------------------------------------------------- units
def plan_units(root: Path) -> list[list[Path]]:
    """Event shards grouped so that no subject spans two groups, in data/ file order.

    Reads only each shard's subject_id column. Shards that share subjects are joined into one
    unit (with a note: MEDS writes each subject's events into one shard).
    """
    files = meds.event_files(root)
    if len(files) == 1:
        return [files]
    parent = list(range(len(files)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    ids_per_file = []
    for path in files:
        ids = np.array([], np.int64)  # unreadable or mistyped: reported when the unit is read
        try:
            column = pq.read_table(path, columns=["subject_id"]).column("subject_id")
            if pa.types.is_integer(column.type):
                ids = np.unique(column.cast(pa.int64()).to_numpy())
        except (pa.ArrowException, OSError, KeyError):
            pass
        ids_per_file.append(ids)
    if len(files) > 1:
        all_ids = np.concatenate(ids_per_file)
        file_of = np.repeat(np.arange(len(files)), [len(i) for i in ids_per_file])
        order = np.argsort(all_ids, kind="stable")
        same = np.flatnonzero(all_ids[order][1:] == all_ids[order][:-1])
        for k in same:  # rare: only where shards share subjects
            a, b = find(int(file_of[order[k]])), find(int(file_of[order[k + 1]]))
            if a != b:
                parent[max(a, b)] = min(a, b)
        if len(same):
            log.info(
                "%d subject(s) have events in more than one data/ shard: those shards are read together",
                len(np.unique(all_ids[order][same])),
            )
    units: dict[int, list[Path]] = {}
    for i, path in enumerate(files):
        units.setdefault(find(i), []).append(path)
    return list(units.values())


def unit_key(root: Path, files: list[Path], labelled: Labelled, max_events: int, lenient: bool) -> str:
    """What a cache shard depends on: its files (as the quick fingerprint sees them), the
    labelled subjects, the truncation and the bad-input mode."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{SHARD_FORMAT}\0{labelled.digest()}\0{max_events}\0{lenient}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------- one unit
def _last_k(rows: np.ndarray, k: int, always: np.ndarray | None = None) -> np.ndarray:
    """For events sorted by row, a mask keeping the last k events of each row; the events marked
    ``always`` (the birth event) are kept and count among the k, so the rest give way to them."""
    always = np.zeros(len(rows), bool) if always is None else always
    starts = np.r_[0, np.flatnonzero(rows[1:] != rows[:-1]) + 1] if len(rows) else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, len(rows)])
    pinned = np.add.reduceat(always.astype(np.int64), starts) if len(rows) else lengths
    # rank among the row's other events, counted from the row's start
    rank = np.cumsum(~always) - 1 - np.repeat(np.cumsum(~always)[starts] - (~always)[starts], lengths)
    others = lengths - pinned
    return always | (rank >= np.repeat(np.maximum(others - np.maximum(k - pinned, 0), 0), lengths))


def _distinct_subjects(code: np.ndarray, rows: np.ndarray, valued: np.ndarray, n_codes: int):
    """How many distinct rows (subjects) have each code, and have it with a value; ``rows``
    sorted. A (subject, code) table of flags, a block of subjects at a time, where it is small
    beside the events (a shard's subjects times its codes): a scatter and a sum, no sort."""
    if not len(code):
        return np.zeros(n_codes, np.int64), np.zeros(n_codes, np.int64)
    local = np.cumsum(np.r_[0, rows[1:] != rows[:-1]])  # 0, 1, ... per distinct row
    n_rows = int(local[-1]) + 1
    if n_rows * n_codes > 32 * len(code):  # many codes, few events each: sort (row, code) pairs
        keys = np.sort((local * n_codes + code) * 2 + ~valued)  # a pair's first key is valued if any is
        pair = keys >> 1
        first = np.r_[True, pair[1:] != pair[:-1]]
        with_value = first & ((keys & 1) == 0)
        return (
            np.bincount(pair[first] % n_codes, minlength=n_codes),
            np.bincount(pair[with_value] % n_codes, minlength=n_codes),
        )
    subjects, valued_subjects = np.zeros(n_codes, np.int64), np.zeros(n_codes, np.int64)
    block = max(1, FLAGS // n_codes)  # subjects per block
    bounds = np.searchsorted(local, np.arange(0, n_rows + block, block))
    seen = np.zeros(min(block, n_rows) * n_codes, bool)
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if lo == hi:
            continue
        cell = (local[lo:hi] - local[lo]) * n_codes + code[lo:hi]
        flags = seen[: (local[hi - 1] - local[lo] + 1) * n_codes]
        for target, which in ((subjects, cell), (valued_subjects, cell[valued[lo:hi]])):
            flags[:] = False
            flags[which] = True
            target += flags.reshape(-1, n_codes).sum(0)
    return subjects, valued_subjects


def partial_counts(code: np.ndarray, rows: np.ndarray, value: np.ndarray, train: np.ndarray, n: int):
    """counts.npy of one shard (COUNT_COLUMNS), over its train subjects' events."""
    t = train[rows]
    code, rows, value = code[t], rows[t], value[t]
    valued = ~np.isnan(value)
    subjects, valued_subjects = _distinct_subjects(code, rows, valued, n)
    v = value[valued].astype(np.float64)
    return np.stack(
        [
            subjects,
            valued_subjects,
            np.bincount(code[valued], minlength=n),
            np.bincount(code[valued], v, n),
            np.bincount(code[valued], v**2, n),
        ],
        axis=1,
    ).astype(np.float64)


def build_unit(root: Path, files: list[Path], labelled: Labelled, max_events: int, lenient: bool, out: Path):
    """Write the cache shard of one unit to ``out`` (atomically); returns its info."""
    bad = BadInput(lenient)
    table = read_unit(files, False, bad)  # unlabelled subjects' rows: dropped by before_prediction
    info = {"files": [f.relative_to(root).as_posix() for f in files], "read": table is not None}
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        if table is not None:
            # Codes as indices into the shard's sorted code names from here on: moving int32
            # indices costs a fraction of moving strings.
            all_names, all_code = _sorted_dictionary(table.column("code"))
            is_birth = all_code == (all_names.index(c.BIRTH_CODE) if c.BIRTH_CODE in all_names else -1)
            table = table.set_column(table.column_names.index("code"), "code", pa.array(all_code))
            kept = before_prediction(table, labelled.subject_ids, labelled.pred_time, is_birth)
            del table, all_code, is_birth
            kept_code = kept.code.to_numpy()
            is_note = np.array([n.startswith(c.NOTE_PREFIX) for n in all_names], bool)
            codes_sel = ~is_note[kept_code] if len(all_names) else np.zeros(0, bool)
            rows, value, days = kept.row[codes_sel], kept.value[codes_sel], kept.days[codes_sel]
            used = np.flatnonzero(np.bincount(kept_code[codes_sel], minlength=len(all_names)))
            names = [all_names[i] for i in used]  # the shard's codes before prediction time
            new_index = np.zeros(len(all_names), np.int32)
            new_index[used] = np.arange(len(used), dtype=np.int32)
            code = new_index[kept_code[codes_sel]]
            counts = partial_counts(code, rows, value, labelled.train, len(names))
            birth = names.index(c.BIRTH_CODE) if c.BIRTH_CODE in names else -1
            keep = _last_k(rows, max_events, code == birth)
            rows, code, value, days = rows[keep], code[keep], value[keep], days[keep]
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else rows[:0]
            subject_rows = rows[starts]
            _save(tmp, "subject_row", subject_rows.astype(np.int64))  # rows of the labelled subjects
            _save(tmp, "offsets", np.r_[starts, len(rows)].astype(np.int64))
            _save(tmp, "code", code)
            _save(tmp, "value", value.astype(np.float32))
            _save(tmp, "days", days.astype(np.float32))
            _save(tmp, "counts", counts)
            (tmp / "codes.json").write_text(json.dumps(names))
            info.update(later=kept.later, born_later=len(kept.born_later), events=int(len(rows)))
        info["skipped"] = bad.summary()
        publish(tmp, out, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _sorted_dictionary(codes) -> tuple[list[str], np.ndarray]:
    """The distinct codes in sorted order and each event's index among them (int32)."""
    encoded = pc.dictionary_encode(codes)
    encoded = encoded.combine_chunks() if isinstance(encoded, pa.ChunkedArray) else encoded
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    order = np.argsort(names, kind="stable")
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return names[order].tolist(), rank[encoded.indices.to_numpy(zero_copy_only=False)]


def _save(folder: Path, name: str, array: np.ndarray) -> None:
    np.save(folder / f"{name}.npy", array, allow_pickle=False)


def publish(tmp: Path, out: Path, info: dict) -> None:
    """Write the done marker last, then rename the shard folder into place; a process that
    finished the same shard first wrote identical bytes, so losing that race is fine."""
    (tmp / DONE).write_text(json.dumps(info, sort_keys=True))
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / DONE).is_file():
            raise


def _build_one(args) -> tuple[int, dict]:
    index, build, *rest = args
    return index, build(*rest)


# ------------------------------------------------------------------------------------ runner
def run_units(
    root: Path,
    units: list[list[Path]],
    labelled: Labelled,
    max_events: int,
    lenient: bool,
    store: Path,
    workers: int = 1,
    part: tuple[int, int] = (0, 1),
    build=build_unit,
) -> list[Path]:
    """Build the cache shards not yet built (those of this ``part`` only); return every unit's
    folder. A failing unit is named in the error; the shards already written are kept.
    ``build`` writes one unit (build_unit; benchmarks pass another engine's, to the same bytes)."""
    folders = [store / unit_key(root, files, labelled, max_events, lenient) for files in units]
    k, n = part
    todo = [i for i in range(k, len(units), n) if not (folders[i] / DONE).is_file()]
    if len(todo) < len(range(k, len(units), n)):
        log.info("EHR: %d of %d shard(s) already prepared: reused", len(units) - len(todo), len(units))
    jobs = [(i, build, root, units[i], labelled, max_events, lenient, folders[i]) for i in todo]
    failures: list[tuple[int, BaseException]] = []
    bar = tqdm(total=len(jobs), desc="preparing EHR shards", unit="shard", leave=False, disable=len(jobs) < 2)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                _build_one(job)
            except (MedweaveError, pa.ArrowException, OSError) as err:
                failures.append((job[0], err))  # the others still run: a rerun needs only this one
            bar.update()
    else:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_build_one, job) for job in jobs]
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as err:  # noqa: BLE001 - named below, with its unit
                    failures.append((jobs[futures.index(future)][0], err))
                bar.update()
    bar.close()
    if failures:
        i, err = min(failures, key=lambda f: f[0])
        more = f" ({len(failures) - 1} other shard(s) failed too)" if len(failures) > 1 else ""
        done = sum((f / DONE).is_file() for f in folders)
        raise MedweaveError(
            f"EHR shard {', '.join(p.relative_to(root).as_posix() for p in units[i])} failed: {err}{more}; "
            f"{done} of {len(units)} shard(s) are prepared and kept: a rerun reuses them"
        ) from None
    return folders
