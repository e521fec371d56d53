"""The pretraining token store: every subject's timeline, one store shard per unit of MEDS shards.

Pretraining learns from everyone's history, labelled or not, so it cannot use the task cache
(shards.py keeps only a task's labelled subjects, cut at their prediction times). This store
keeps each subject's code events in time order (static events such as sex first), with the raw
value, the age at the event and the days since the previous event. It is built per unit of
MEDS shards (shards.plan_units), in bounded memory, atomically, and reused while its inputs stay
the same, as the task cache is; the vocabulary and the value bins are reduced from the shards'
partial counts, over pretraining subjects of the train split only.

The leakage rule (``eval_subjects``), applied while a shard is built:

- ``cut`` (default): a tuning or held-out subject (or one of a custom split) contributes only
  events strictly before its earliest prediction time in any label file under ``labels/``
  (static events too); one with no prediction time contributes nothing (a task labelled later
  could otherwise evaluate on what pretraining saw).
- ``exclude``: tuning and held-out subjects (and custom splits) contribute nothing at all.

Train-split subjects, and subjects the splits file does not list, contribute their whole
history. Only label files under ``labels/`` (or ``labels_dir``) are seen: a task labelled
elsewhere (an ACES task file, whose labels are computed into the cache) may predict earlier than
the cut. So the checkpoint keeps every evaluation subject's cutoff, and fine-tuning refuses a
task whose tuning or held-out samples predict before it (``leaked_samples``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.ehr.events import NO_TIME, read_unit
from medweave.data.ehr.shards import DONE, _distinct_subjects, _save, _sorted_dictionary, plan_units, publish
from medweave.data.readers import meds
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

STORE = "pretrain"  # under cache_dir
FORMAT = 2  # bump when a store shard's content changes
EVAL_SUBJECTS = ("cut", "exclude")
EXCLUDED = np.iinfo(np.int64).min  # cutoff of a subject that contributes nothing
ARRAYS = ("offsets", "n_static", "code", "value", "age", "delta", "time")
SKETCH = 101  # value quantiles each shard keeps per code (merged into the bins)
PAD, UNK, MASK = 0, 1, 2  # pretraining code ids; real codes start at 3
US_PER_DAY = 8.64e10


@dataclass(frozen=True)
class Cutoffs:
    """Per listed subject (sorted ids): events at or after ``cutoff`` (int64 us) are left out
    (NO_TIME: the whole history; EXCLUDED: nothing); ``train``: counts toward the vocabulary."""

    subject_ids: np.ndarray
    cutoff: np.ndarray
    train: np.ndarray

    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for a in (self.subject_ids, self.cutoff, self.train):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


def eval_cutoffs(root: Path, eval_subjects: str, labels_dir: str | None = None) -> Cutoffs:
    """The leakage rule of the module docstring, as a cutoff per subject of the splits file."""
    if eval_subjects not in EVAL_SUBJECTS:
        raise MedweaveError(f"pretrain.eval_subjects={eval_subjects}: expected one of {list(EVAL_SUBJECTS)}")
    splits = meds.read_splits(root)
    ids = splits.table.column("subject_id").to_numpy()
    split = np.asarray(splits.table.column("split").to_pylist(), dtype=object)
    ids = np.concatenate([ids, np.asarray(splits.unused, np.int64)])
    split = np.concatenate([split, np.full(len(splits.unused), "custom", dtype=object)])
    order = np.argsort(ids, kind="stable")
    ids, split = ids[order], split[order]
    train = split == c.TRAIN_SPLIT
    cutoff = np.where(train, NO_TIME, EXCLUDED).astype(np.int64)
    if eval_subjects == "cut":
        first = earliest_prediction_times(root, labels_dir)
        if len(first[0]):
            at = np.clip(np.searchsorted(first[0], ids), 0, len(first[0]) - 1)
            labelled = ~train & (first[0][at] == ids)
            cutoff[labelled] = first[1][at[labelled]]
    return Cutoffs(ids, cutoff, train)


def evaluation_cutoffs(cutoffs: Cutoffs) -> dict:
    """What a checkpoint keeps of the rule: the cutoff of every listed non-train subject."""
    return {"subject_ids": cutoffs.subject_ids[~cutoffs.train], "cutoff": cutoffs.cutoff[~cutoffs.train]}


def leaked_samples(saved: dict, subject_id: np.ndarray, prediction_time: np.ndarray) -> int:
    """How many of these (tuning or held-out) samples' subjects gave pretraining events at or
    after the sample's prediction time: whole histories (not listed as evaluation subjects when
    pretrained) or a cutoff later than the prediction time (e.g. an ACES task with an earlier
    trigger than the labels pretraining was cut at)."""
    ids, cutoff = np.asarray(saved["subject_ids"]), np.asarray(saved["cutoff"])
    at = np.clip(np.searchsorted(ids, subject_id), 0, max(len(ids) - 1, 0))
    listed = ids[at] == subject_id if len(ids) else np.zeros(len(subject_id), bool)
    cut = np.where(listed, cutoff[at] if len(ids) else NO_TIME, NO_TIME)
    seen_after = (cut == NO_TIME) | ((cut != EXCLUDED) & (cut > prediction_time))
    return int(seen_after.sum())


def earliest_prediction_times(root: Path, labels_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted subject ids, earliest prediction_time in us) over every label file of the cohort."""
    folder = Path(labels_dir) if labels_dir else root / c.LABELS_DIR
    if not folder.is_absolute():
        folder = root / folder
    ids, times = [], []
    for path in sorted(folder.rglob("*.parquet")) if folder.is_dir() else []:
        try:
            table = pq.read_table(path, columns=["subject_id", "prediction_time"])
        except (pa.ArrowException, OSError, KeyError) as err:
            raise MedweaveError(
                f"{path}: cannot read subject_id and prediction_time ({err}); the leakage rule of "
                "pretrain.eval_subjects=cut needs every label file (or use pretrain.eval_subjects=exclude)"
            ) from None
        ids.append(table.column("subject_id").cast(pa.int64()).to_numpy())
        times.append(meds.microseconds(table.column("prediction_time")))
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ids, times = np.concatenate(ids), np.concatenate(times)
    order = np.lexsort((times, ids))
    ids, times = ids[order], times[order]
    first = np.r_[True, ids[1:] != ids[:-1]]
    return ids[first], times[first]


# --------------------------------------------------------------------------------- one unit
def unit_key(root: Path, files: list[Path], cutoffs: Cutoffs, lenient: bool) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{FORMAT}\0{cutoffs.digest()}\0{lenient}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def kept_events(sid: np.ndarray, time: np.ndarray, static: np.ndarray, cutoffs: Cutoffs) -> np.ndarray:
    """Which events the leakage rule lets into pretraining (see the module docstring)."""
    at = np.clip(np.searchsorted(cutoffs.subject_ids, sid), 0, max(len(cutoffs.subject_ids) - 1, 0))
    listed = cutoffs.subject_ids[at] == sid if len(cutoffs.subject_ids) else np.zeros(len(sid), bool)
    cutoff = np.where(listed, cutoffs.cutoff[at] if len(cutoffs.cutoff) else NO_TIME, NO_TIME)
    whole = cutoff == NO_TIME
    return whole | ((cutoff != EXCLUDED) & (static | (time < cutoff)))


def build_unit(root: Path, files: list[Path], cutoffs: Cutoffs, lenient: bool, out: Path) -> dict:
    """Write the store shard of one unit to ``out`` (atomically); returns its info."""
    bad = BadInput(lenient)
    table = read_unit(files, False, bad)
    info = {"files": [f.relative_to(root).as_posix() for f in files], "read": table is not None}
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        if table is not None:
            _write_tokens(table, cutoffs, tmp, info)
        info["skipped"] = bad.summary()
        publish(tmp, out, info)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _write_tokens(table: pa.Table, cutoffs: Cutoffs, tmp: Path, info: dict) -> None:
    names, code = _sorted_dictionary(table.column("code"))
    is_note = np.array([n.startswith(c.NOTE_PREFIX) for n in names], bool)
    sid = table.column("subject_id").to_numpy()
    static = table.column("time").is_null().to_numpy(zero_copy_only=False)
    time = table.column("time").cast(pa.int64()).fill_null(NO_TIME).to_numpy()
    value = table.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float32)
    keep = kept_events(sid, time, static, cutoffs) & ~(is_note[code] if len(names) else False)
    info["left_out"] = int((~keep).sum())
    idx = np.flatnonzero(keep)
    # Subject, then static events first (context for every token after them), then time; ties
    # keep the table's order.
    idx = idx[np.lexsort((time[idx], ~static[idx], sid[idx]))]
    sid, code, value, time, static = sid[idx], code[idx], value[idx], time[idx], static[idx]
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]]) if len(sid) else np.zeros(0, np.int64)
    row = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(sid)]))
    birth_code = names.index(c.BIRTH_CODE) if c.BIRTH_CODE in names else -1
    birth = np.full(len(starts), NO_TIME, np.int64)
    is_birth = (code == birth_code) & ~static
    np.minimum.at(birth, row[is_birth], time[is_birth])
    age = np.where(static | (birth[row] == NO_TIME), np.nan, (time - birth[row]) / US_PER_DAY)
    previous = np.r_[NO_TIME, time[:-1]]
    first_timed = ~static & (np.r_[True, row[1:] != row[:-1]] | np.r_[True, static[:-1]])
    delta = np.where(static, np.nan, np.where(first_timed, 0.0, (time - previous) / US_PER_DAY))
    used = np.flatnonzero(np.bincount(code, minlength=len(names))) if len(code) else np.zeros(0, int)
    local = np.zeros(len(names), np.int32)
    local[used] = np.arange(len(used), dtype=np.int32)
    code = local[code]
    shard_names = [names[i] for i in used]
    train = _train_rows(sid[starts], cutoffs)
    _save(tmp, "subject_id", sid[starts].astype(np.int64))
    _save(tmp, "offsets", np.r_[starts, len(sid)].astype(np.int64))
    _save(tmp, "n_static", np.bincount(row[static], minlength=len(starts)).astype(np.int64))
    _save(tmp, "code", code)
    _save(tmp, "value", value)
    _save(tmp, "age", age.astype(np.float32))
    _save(tmp, "delta", delta.astype(np.float32))
    _save(tmp, "time", np.where(static, NO_TIME, time).astype(np.int64))
    t = train[row]  # rows are in subject order, as _distinct_subjects needs
    subjects, valued = _distinct_subjects(code[t], row[t], ~np.isnan(value[t]), len(used))
    _save(tmp, "subjects", subjects.astype(np.int64))
    _save(tmp, "valued_subjects", valued.astype(np.int64))  # value bins need this many people
    _save(tmp, "sketch", _value_sketch(code[train[row]], value[train[row]], len(used)))
    (tmp / "codes.json").write_text(json.dumps(shard_names))
    info.update(events=int(len(sid)), subjects=int(len(starts)))


def _train_rows(ids: np.ndarray, cutoffs: Cutoffs) -> np.ndarray:
    """Train-split subjects, and those the splits file does not list: the vocabulary's."""
    at = np.clip(np.searchsorted(cutoffs.subject_ids, ids), 0, max(len(cutoffs.subject_ids) - 1, 0))
    listed = cutoffs.subject_ids[at] == ids if len(cutoffs.subject_ids) else np.zeros(len(ids), bool)
    return ~listed | (cutoffs.train[at] if len(cutoffs.train) else False)


def _value_sketch(code: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """[n, 1 + SKETCH]: per code, how many values, then their quantiles at SKETCH even points."""
    out = np.full((n, 1 + SKETCH), np.nan)
    out[:, 0] = 0
    valued = ~np.isnan(value)
    code, value = code[valued], value[valued].astype(np.float64)
    order = np.lexsort((value, code))
    code, value = code[order], value[order]
    bounds = np.searchsorted(code, np.arange(n + 1))
    for k in np.flatnonzero(np.diff(bounds)):
        v = value[bounds[k] : bounds[k + 1]]
        out[k, 0] = len(v)
        out[k, 1:] = np.quantile(v, np.linspace(0, 1, SKETCH))
    return out


# ------------------------------------------------------------------------- runner and reduce
def build_store(
    root: Path, cache_dir: Path, eval_subjects: str, labels_dir: str | None = None, lenient: bool = False
) -> list[Path]:
    """Build the store shards not yet built; return every unit's folder, in unit order."""
    cutoffs = eval_cutoffs(root, eval_subjects, labels_dir)
    units = plan_units(root)
    store = Path(cache_dir) / STORE
    store.mkdir(parents=True, exist_ok=True)
    folders = [store / unit_key(root, files, cutoffs, lenient) for files in units]
    todo = [i for i, f in enumerate(folders) if not (f / DONE).is_file()]
    # Each shard is built by one process, under a lock beside it: DDP ranks (every rank calls
    # this), nodes on a shared file system and parallel runs first take the shards no one else
    # holds (so they share the work), then wait for the others' and build any a crash left.
    for wait in (False, True):
        bar = tqdm(todo, desc="pretraining store", unit="shard", leave=False, disable=len(todo) < 2 or wait)
        for i in bar:
            try:
                lock = folders[i].with_name(f".{folders[i].name}.lock")
                with FileLock(str(lock), timeout=-1 if wait else 0):
                    if not (folders[i] / DONE).is_file():
                        build_unit(root, units[i], cutoffs, lenient, folders[i])
            except Timeout:
                continue  # another process holds it; the second pass waits for it
            except (pa.ArrowException, OSError) as err:
                raise MedweaveError(
                    f"pretraining store: shard {', '.join(p.relative_to(root).as_posix() for p in units[i])} "
                    f"failed: {err}; the shards already written are kept: a rerun reuses them"
                ) from None
    infos = [json.loads((f / DONE).read_text()) for f in folders]
    if not any(i.get("events") for i in infos):
        raise MedweaveError(f"cohort '{root}': no event of any pretraining subject (pretrain.eval_subjects)")
    left_out = sum(i.get("left_out", 0) for i in infos)
    log.info(
        "pretraining store: %d event(s) of %d subject(s) in %d shard(s); %d left out by "
        "pretrain.eval_subjects=%s (no leakage)",
        sum(i.get("events", 0) for i in infos),
        sum(i.get("subjects", 0) for i in infos),
        len(folders),
        left_out,
        eval_subjects,
    )
    return folders


def fit_vocab(folders: list[Path], min_subjects: int, n_bins: int) -> dict:
    """{"codes": sorted names, "bins": {name: [n_bins - 1 inner edges]}, "n_bins"} from the
    shards' counts over train subjects: a code needs ``min_subjects`` of them, and its value bins
    ``min_subjects`` with a value (edges as quantiles, merged from the shards' sketches), so no
    edge is one person's values."""
    names, subjects, valued, sketches = [], [], [], []
    for f in folders:
        if (f / "codes.json").is_file():
            names += json.loads((f / "codes.json").read_text())
            subjects.append(np.load(f / "subjects.npy"))
            valued.append(np.load(f / "valued_subjects.npy"))
            sketches.append(np.load(f / "sketch.npy"))
    if not names:
        return {"codes": [], "bins": {}, "n_bins": n_bins}
    unique, inverse = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    inverse = inverse.reshape(-1)
    total, total_valued = np.zeros(len(unique), np.int64), np.zeros(len(unique), np.int64)
    np.add.at(total, inverse, np.concatenate(subjects))
    np.add.at(total_valued, inverse, np.concatenate(valued))
    sketch = np.concatenate(sketches)
    codes = sorted(str(unique[i]) for i in np.flatnonzero(total >= min_subjects))
    bins = {}
    inner = np.linspace(0, 1, n_bins + 1)[1:-1]
    by_code = np.argsort(inverse, kind="stable")  # one sort, then each code's sketches are a slice
    bounds = np.searchsorted(inverse[by_code], np.arange(len(unique) + 1))
    for k in np.flatnonzero((total >= min_subjects) & (total_valued >= min_subjects)):
        parts = sketch[by_code[bounds[k] : bounds[k + 1]]]
        counts = parts[:, 0]
        points = parts[counts > 0, 1:].reshape(-1)
        weights = np.repeat(counts[counts > 0] / SKETCH, SKETCH)
        order = np.argsort(points, kind="stable")
        cdf = np.cumsum(weights[order]) / weights.sum()
        edges = np.interp(inner, cdf, points[order])
        bins[str(unique[k])] = [round(float(e), 6) for e in edges]
    return {"codes": codes, "bins": bins, "n_bins": n_bins}


def value_bins(value: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin ids: 0 no value (or a code without bins), 1..n_bins by the code's edges ([N, n_bins-1],
    NaN rows = no bins)."""
    has = ~np.isnan(value) & ~np.isnan(edges[:, 0]) if edges.shape[1] else ~np.isnan(value)
    above = (value[:, None] > edges).sum(1) if edges.shape[1] else np.zeros(len(value), np.int64)
    return np.where(has, 1 + above, 0).astype(np.int64)


def shard_windows(folder: Path, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(timed events, timed room per window, subject ids) of one built store shard, per subject:
    a window holds its subject's static events and up to ``room`` of its timed ones (None: the
    shard holds no subjects)."""
    if not (folder / "offsets.npy").is_file():
        return None
    offsets, n_static = np.load(folder / "offsets.npy"), np.load(folder / "n_static.npy")
    timed = np.diff(offsets) - n_static
    room = np.maximum(width - np.minimum(n_static, width - 1), 1)
    return timed, room, np.load(folder / "subject_id.npy")


class TokenStore:
    """The store shards of one cohort, read as windows of ``width`` tokens.

    A sample is one window of one subject: its static events, then up to ``width`` minus those
    of its timed events, consecutive; a subject's timed events are split into as many windows as
    it takes, so every event is trained on once per epoch.
    """

    def __init__(self, folders: list[Path], vocab: dict, width: int):
        self.folders, self.vocab, self.width = list(folders), vocab, width
        self._open: dict[int, dict] = {}
        parts = []
        for s, f in enumerate(self.folders):
            if (geometry := shard_windows(f, width)) is None:
                continue
            timed, room, ids = geometry
            n_windows = np.maximum(-(-timed // room), 1)
            subject = np.repeat(np.arange(len(timed)), n_windows)
            first = np.cumsum(n_windows) - n_windows
            window = np.arange(len(subject)) - np.repeat(first, n_windows)
            parts.append(
                np.stack([np.full(len(subject), s), subject, window * room[subject], ids[subject]], 1)
            )
        self.samples = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)  # shard, row, start, id

    def __getstate__(self):  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_open": {}}

    def _shard(self, s: int) -> dict:
        if s not in self._open:
            f = self.folders[s]
            shard = {name: np.load(f / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
            names = json.loads((f / "codes.json").read_text())
            ids = {name: i + 3 for i, name in enumerate(self.vocab["codes"])}
            shard["ids"] = np.array([ids.get(n, UNK) for n in names], np.int64)
            n_edges = self.vocab["n_bins"] - 1
            edges = np.full((len(names), n_edges), np.nan)
            for i, n in enumerate(names):
                if n in self.vocab["bins"]:
                    edges[i] = self.vocab["bins"][n]
            shard["edges"] = edges
            self._open[s] = shard
        return self._open[s]

    def batch(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """codes, bins int64; age, delta float32 (days; NaN = static, or no birth event for age);
        time int64 us (NO_TIME for static; for tests and checks, not the model) [B, W], padding
        after (code 0); W is the longest sample in the batch."""
        takes = []
        for s, r, start, _ in samples:
            shard = self._shard(int(s))
            lo, hi = int(shard["offsets"][r]), int(shard["offsets"][r + 1])
            ns = min(int(shard["n_static"][r]), self.width - 1)
            room = self.width - ns
            take = np.r_[np.arange(lo, lo + ns), np.arange(lo + int(shard["n_static"][r]) + start, hi)[:room]]
            takes.append((shard, take))
        w = max(max((len(t) for _, t in takes), default=1), 1)
        n = len(samples)
        out = {
            "codes": np.zeros((n, w), np.int64),
            "bins": np.zeros((n, w), np.int64),
            "age": np.full((n, w), np.nan, np.float32),
            "delta": np.full((n, w), np.nan, np.float32),
            "time": np.full((n, w), NO_TIME, np.int64),
        }
        for i, (shard, take) in enumerate(takes):
            local = np.asarray(shard["code"][take])
            k = len(take)
            out["codes"][i, :k] = shard["ids"][local]
            out["bins"][i, :k] = value_bins(
                np.asarray(shard["value"][take], np.float64), shard["edges"][local]
            )
            out["age"][i, :k] = shard["age"][take]
            out["delta"][i, :k] = shard["delta"][take]
            out["time"][i, :k] = shard["time"][take]
        return out


def describe(folders: list[Path]) -> dict:
    """Counts for logs and MLflow: shards, subjects, events (no IDs)."""
    infos = [json.loads((f / DONE).read_text()) for f in folders]
    return {
        "shards": len(folders),
        "subjects": sum(i.get("subjects", 0) for i in infos),
        "events": sum(i.get("events", 0) for i in infos),
        "left_out": sum(i.get("left_out", 0) for i in infos),
    }
