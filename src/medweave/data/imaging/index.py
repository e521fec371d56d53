"""imaging/index.parquet as arrays, and which row each sample uses: the latest before prediction time.

The 2D image (images.py) and the 3D volume (volumes.py) modalities both choose from this index;
their stored items are keyed by index row, so every task picks from the same store.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data import store
from medweave.data.bad_input import BadInput
from medweave.data.readers import meds
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)


class ImagingIndex:
    """imaging/index.parquet as arrays; rows with an unknown modality are reported (and, lenient,
    left out) once here."""

    def __init__(self, root: Path, bad: BadInput):
        self.root = root
        self.file = root / c.IMAGING_INDEX
        table = meds.read_imaging_index(root)
        self.subject_id = table.column("subject_id").to_numpy(zero_copy_only=False)
        self.time = meds.microseconds(table.column("time"))
        self.path = table.column("path").to_pylist()
        n = table.num_rows
        if "modality" in table.column_names:
            modality = table.column("modality").cast(pa.string())
            self.modality = np.array(modality.to_pylist(), dtype=object)
            unknown = pc.invert(pc.is_in(modality, pa.array(c.IMAGING_MODALITIES))).fill_null(False)
            unknown = unknown.to_numpy(zero_copy_only=False)
        else:
            self.modality = np.full(n, None, dtype=object)
            unknown = np.zeros(n, bool)
        empty = np.array([not p for p in self.path], bool)
        self.usable = ~unknown & ~empty
        if empty.any():
            bad.fault(
                self.file,
                f"row {int(np.flatnonzero(empty)[0])}, field path",
                "is null or empty; expected a file or folder under imaging/",
                count=int(empty.sum()),
            )
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            bad.fault(
                self.file,
                f"row {first}, field modality",
                f"'{self.modality[first]}' is not an imaging modality medweave reads; expected one of "
                f"{list(c.IMAGING_MODALITIES)} or null",
                count=int(unknown.sum()),
            )

    def absolute(self, i: int) -> Path:
        return self.root / c.IMAGING_DIR / self.path[i]

    def latest(self, candidates: np.ndarray, subject_ids: np.ndarray, pred_time: np.ndarray) -> dict:
        """Cohort row -> index row of the subject's most recent candidate before prediction_time."""
        sid, time = self.subject_id, self.time
        row = np.clip(np.searchsorted(subject_ids, sid), 0, len(subject_ids) - 1)
        ok = candidates & self.usable & (subject_ids[row] == sid) & (time < pred_time[row])
        latest: dict[int, int] = {}
        for i in np.flatnonzero(ok):
            if row[i] not in latest or time[i] > time[latest[row[i]]]:
                latest[int(row[i])] = int(i)
        return latest


def stored_rows(index: ImagingIndex, candidates: np.ndarray) -> np.ndarray:
    """The index rows a store holds: every usable candidate that some prediction time could choose.

    ``latest`` keeps the first row of a tie (one subject, one time), so the later rows of a tie
    are never chosen and are not stored (the sandbox lists each CT twice, as a series and as NIfTI).
    """
    ok = np.flatnonzero(candidates & index.usable)
    if not len(ok):
        return ok
    _, first = np.unique(np.stack([index.subject_id[ok], index.time[ok]], axis=1), axis=0, return_index=True)
    return np.sort(ok[first])


def write_store(tmp: Path, name: str, index: ImagingIndex, candidates, shape, read, bad: BadInput, unit: str):
    """Read every stored row into ``tmp/<name>.npy`` (float16 [items, *shape]) with ``read(i)``;
    ``store_row.npy`` says where each index row went (-1: not stored, or unreadable and skipped)."""
    rows = stored_rows(index, candidates)
    arrays = np.lib.format.open_memmap(
        tmp / f"{name}.npy", mode="w+", dtype=np.float16, shape=(len(rows), *shape)
    )
    store_row = np.full(len(index.path), -1, np.int64)
    for k, i in enumerate(tqdm(rows, desc=f"reading {unit}s", unit=unit, leave=False)):
        try:
            arrays[k] = read(int(i))
        except MedweaveError as err:
            bad.fault(index.file, f"row {i}, field path", f"{err}")
            arrays[k] = 0
            continue
        store_row[i] = k
    arrays.flush()
    del arrays
    np.save(tmp / "candidates.npy", candidates)
    np.save(tmp / "store_row.npy", store_row)
    return {"items": int(len(rows)), "read": int((store_row >= 0).sum()), "skipped": bad.summary()}


def choose(index: ImagingIndex, folder: Path, subject_ids: np.ndarray, pred_time: np.ndarray) -> np.ndarray:
    """Each sample's store row in the store at ``folder``: its latest candidate before prediction
    time (-1: none, or that file was unreadable, as before the store: no fall-back to an older one)."""
    candidates = np.load(folder / "candidates.npy")
    store_row = np.load(folder / "store_row.npy")
    rows = np.full(len(subject_ids), -1, np.int64)
    for r, i in index.latest(candidates, subject_ids, pred_time).items():
        rows[r] = store_row[i]
    return rows


def store_folder(out: Path, modality: str, root: Path, cfg, **options) -> Path:
    """``<cache_dir>/<modality>/<key>``: keyed by the imaging folder's files and the modality's
    own options (not the task: each task chooses its rows with ``choose``)."""
    from medweave.data.prepare import CACHE_FORMAT

    inputs = store.inputs_fingerprint(root, [c.IMAGING_DIR], cfg.fingerprint, out.parent)
    return (
        out.parent / modality / store.key(cache=CACHE_FORMAT, inputs=inputs, lenient=cfg.lenient, **options)
    )


def report_skipped(info: dict, built: bool, what: str) -> None:
    """Lenient mode: files the store skipped are said again when another task reuses it."""
    skipped = sum(info.get("skipped", {}).values())
    if skipped and not built:
        log.warning(
            "%s store: %d unreadable file(s) were skipped when it was built (lenient mode)", what, skipped
        )
