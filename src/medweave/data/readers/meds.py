"""MEDS parquet as MEDS ETLs write it: event shards, subject splits, label files, imaging index.

What is read, and how far it bends (the MEDS 0.4 schemas, ``meds.DataSchema`` and friends):

* events: every ``data/**/*.parquet`` shard, in any sub-folder layout (``data/0.parquet``,
  ``data/train/0.parquet``, ``data/held_out/3.parquet``...). Only ``subject_id``, ``time`` and
  ``code`` are required; ``numeric_value`` and ``text_value`` are optional in MEDS and read as
  null where absent. Extra columns are never read. ``time`` may be any timestamp unit or carry a
  time zone: MEDS says ``timestamp[us]`` without a zone, so ns/ms/s are converted to microseconds
  (sub-microsecond digits dropped) and zoned times are taken as the UTC instants they store.
  ``numeric_value`` may be float64, an integer type or all-null; it is kept as float32.
* splits: ``metadata/subject_splits.parquet``; extra columns are ignored. MEDS allows splits
  beyond train/tuning/held_out: their subjects are not used (one warning says how many). A name
  that looks like a MEDS split under another spelling ("test", "val", "trian") is an error, since
  leaving those subjects out would quietly shrink an experiment.
* labels (MEDS label schema): ``<labels_dir>/<task>.parquet`` or a folder ``<labels_dir>/<task>/``
  of shards (as ACES and meds_testing_helpers write them). ``labels_dir`` is ``labels`` under the
  cohort unless set (``data.labels_dir``; relative to the cohort, or absolute). medweave trains
  one sample per subject: where a labeller wrote several prediction times for a subject,
  ``label_rows`` says which one is kept (``first`` or ``last``) or that it is an error (default).

``metadata/codes.parquet`` and ``metadata/dataset.json`` are optional here: nothing below reads them.

Faults go through :class:`~medweave.data.bad_input.BadInput`: in strict mode (the default) the
first one raises, naming the file, the row (its number in that file, from 0) or field, and what was
expected; in lenient mode the rows (or the unreadable shard) are left out with a counted warning.
Rows are never named by subject ID.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("subject_id", "time", "code", "numeric_value", "text_value")
LABEL_VALUE_COLUMNS = ("boolean_value", "integer_value", "float_value", "categorical_value")
LABEL_ROWS = ("error", "first", "last")
# Split names that mean a MEDS split under another spelling: an error, never a custom split.
SPLIT_ALIASES = {
    "test": c.HELD_OUT_SPLIT,
    "testing": c.HELD_OUT_SPLIT,
    "heldout": c.HELD_OUT_SPLIT,
    "held-out": c.HELD_OUT_SPLIT,
    "holdout": c.HELD_OUT_SPLIT,
    "val": c.TUNING_SPLIT,
    "valid": c.TUNING_SPLIT,
    "validation": c.TUNING_SPLIT,
    "dev": c.TUNING_SPLIT,
    "tune": c.TUNING_SPLIT,
    "training": c.TRAIN_SPLIT,
}
SOURCE_FILE, SOURCE_ROW = "_source_file", "_source_row"  # where each label row came from


def read_parquet(path: Path, required: tuple[str, ...], columns=None) -> pa.Table:
    """A whole parquet file with its required columns, or an error naming the file."""
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise MedweaveError(f"{path}: cannot be read as parquet ({err})") from None
    c.require_columns(table, required, path)
    return table


def _read_columns(path: Path, wanted, bad: BadInput, what: str) -> pa.Table | None:
    """The ``wanted`` columns the file has (others are never read); None if lenient skipped it."""
    try:
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[n for n in wanted if n in names])
    except (pa.ArrowException, OSError) as err:
        bad.fault(path, "file", f"expected a readable parquet file of {what} ({err})")
        return None


def _rows(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask, bool))


def _drop_rows(table: pa.Table, mask, path: Path, field: str, expected: str, bad: BadInput) -> pa.Table:
    """Report the rows where ``mask`` is set (first row number and count); keep the others."""
    rows = _rows(mask)
    if len(rows):
        first = (
            table.column(SOURCE_ROW)[int(rows[0])].as_py() if SOURCE_ROW in table.column_names else rows[0]
        )
        bad.fault(path, f"row {first}, field {field}", expected, count=len(rows))
        table = table.filter(pa.array(~np.asarray(mask, bool)))
    return table


def _is_null(column) -> np.ndarray:
    return column.is_null().to_numpy(zero_copy_only=False)


# --------------------------------------------------------------------------------------- times
def _timestamps(path: Path, table: pa.Table, name: str, bad: BadInput) -> pa.Table | None:
    """Column ``name`` as timestamp[us] (no zone); None if the file cannot be used (lenient)."""
    column = table.column(name)
    kind = column.type
    expected = f"has type {kind}; expected timestamp[us] (MEDS)"
    if pa.types.is_timestamp(kind):
        if kind.unit != "us" or kind.tz is not None:
            log.info(
                "%s: %s is %s; MEDS says timestamp[us]: read as UTC microseconds%s",
                path,
                name,
                kind,
                " (sub-microsecond digits dropped)" if kind.unit == "ns" else "",
            )
        converted = column.cast(pa.timestamp("us"), safe=False)
    elif pa.types.is_null(kind) or pa.types.is_date(kind):
        converted = column.cast(pa.timestamp("us"))
    elif (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and bad.lenient:
        converted = _parse_times(column)
        unreadable = ~_is_null(column) & _is_null(converted)
        log.warning("%s: column %s %s; ISO-8601 strings parsed (lenient mode)", path, name, expected)
        table = table.set_column(table.column_names.index(name), name, converted)
        return _drop_rows(table, unreadable, path, name, "time is not a readable ISO-8601 timestamp", bad)
    else:
        bad.fault(path, f"column {name}", expected)
        return None
    return table.set_column(table.column_names.index(name), name, converted)


def _parse_times(column) -> pa.ChunkedArray:
    """ISO-8601 strings to timestamp[us]; unreadable ones become null (lenient mode only)."""
    try:
        return column.cast(pa.timestamp("us"))
    except pa.ArrowInvalid:
        pass
    formats = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
    parsed = [pc.strptime(column, format=f, unit="us", error_is_null=True) for f in formats]
    return pc.coalesce(*parsed)


# -------------------------------------------------------------------------------------- events
def event_files(root: Path) -> list[Path]:
    """Every event shard under data/, in any sub-folder layout, in a fixed order."""
    files = sorted((root / c.EVENTS_DIR).rglob("*.parquet"))
    if not files:
        raise MedweaveError(
            f"cohort '{root}' has no event files: expected MEDS events in {c.EVENTS_DIR}/**/*.parquet"
        )
    return files


def read_events(
    root: Path, with_text: bool, bad: BadInput | None = None, subjects: np.ndarray | None = None
) -> pa.Table:
    """All event shards as one table: subject_id int64, time timestamp[us], code string,
    numeric_value float32 (+ text_value when notes are needed). ``subjects`` keeps only those
    subjects' events while reading, so a large export is never held whole in memory."""
    bad = bad or BadInput()
    tables = []
    files = event_files(root)
    for path in tqdm(files, desc="reading event shards", unit="shard", leave=False, disable=len(files) < 8):
        table = read_event_shard(path, with_text, bad, subjects)
        if table is not None:
            tables.append(table)
    if not tables:
        raise MedweaveError(f"cohort '{root}': no event shard under {c.EVENTS_DIR}/ could be read")
    return pa.concat_tables(tables)


def read_event_shard(
    path: Path, with_text: bool, bad: BadInput, subjects: np.ndarray | None = None
) -> pa.Table | None:
    """One event shard in medweave's types (as read_events); None if lenient mode skipped it."""
    wanted = EVENT_COLUMNS if with_text else EVENT_COLUMNS[:4]
    table = _read_columns(path, wanted, bad, "MEDS events")
    if table is not None:
        table = _conform_events(path, table, wanted, bad)
    if table is not None and subjects is not None:
        table = table.filter(pc.is_in(table.column("subject_id"), pa.array(np.asarray(subjects, np.int64))))
    return table


def _conform_events(path: Path, table: pa.Table, wanted, bad: BadInput) -> pa.Table | None:
    """One shard in medweave's event types; bad rows reported; None if the shard is unusable."""
    missing = [n for n in c.REQUIRED_COLUMNS["events"] if n not in table.column_names]
    if missing:
        bad.fault(
            path,
            f"column {', '.join(missing)}",
            f"missing; MEDS events need subject_id, time and code (found {table.column_names})",
        )
        return None
    types = {f.name: f.type for f in c.EVENTS_SCHEMA}
    accept = {
        "subject_id": pa.types.is_integer,
        "code": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or _is_dict_of_strings(t),
        "numeric_value": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t),
        "text_value": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t),
    }
    columns = {}
    for name in wanted:
        if name == "time":
            continue
        if name not in table.column_names:  # numeric_value and text_value are optional in MEDS
            columns[name] = pa.nulls(table.num_rows, types[name])
            continue
        kind = table.schema.field(name).type
        if not accept[name](kind):
            bad.fault(path, f"column {name}", f"has type {kind}; expected {types[name]} (MEDS)")
            return None
        columns[name] = table.column(name).cast(types[name], safe=False)
    columns["time"] = table.column("time")
    columns[SOURCE_ROW] = pa.array(np.arange(table.num_rows, dtype=np.int64))
    table = _timestamps(path, pa.table({n: columns[n] for n in (*wanted, SOURCE_ROW)}), "time", bad)
    if table is None:
        return None
    table = _drop_rows(
        table,
        _is_null(table.column("subject_id")),
        path,
        "subject_id",
        "subject_id is null (MEDS: never null)",
        bad,
    )
    table = _drop_rows(
        table, _is_null(table.column("code")), path, "code", "code is null (MEDS: never null)", bad
    )
    return table.drop_columns([SOURCE_ROW])


def _is_dict_of_strings(kind: pa.DataType) -> bool:
    return pa.types.is_dictionary(kind) and (
        pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)
    )


# -------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits:
    """Who is in which MEDS split. ``table``: subject_id, split (train/tuning/held_out only, one row
    per subject). ``unused``: subjects of custom splits and, in lenient mode, subjects listed in
    two splits; both were already reported, so their labels are left out without another fault."""

    table: pa.Table
    unused: np.ndarray


def read_splits(root: Path, bad: BadInput | None = None) -> Splits:
    bad = bad or BadInput()
    path = c.require_file(root, c.SUBJECT_SPLITS, "train/tuning/held_out splits")
    table = _read_columns(path, c.REQUIRED_COLUMNS["splits"], BadInput(), "subject splits")
    c.require_columns(table, c.REQUIRED_COLUMNS["splits"], path)
    if not pa.types.is_integer(table.schema.field("subject_id").type):
        raise MedweaveError(
            f"{path}: column subject_id has type {table.schema.field('subject_id').type}; expected int64"
        )
    table = table.cast(c.SPLITS_SCHEMA, safe=False)
    table = table.append_column(SOURCE_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    for name in ("subject_id", "split"):
        table = _drop_rows(table, _is_null(table.column(name)), path, name, f"{name} is null", bad)
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    _refuse_misnamed_splits(path, split, table.column(SOURCE_ROW).to_numpy())

    # A subject listed more than once: in two splits, all its rows go (lenient); in one split
    # twice, one row stays. Both are faults: an export that repeats rows may be wrong elsewhere.
    ids = table.column("subject_id").to_numpy()
    split_code = np.unique(split.astype(str), return_inverse=True)[1]
    _, first_of_pair = np.unique(np.stack([ids, split_code]), axis=1, return_index=True)
    repeated = np.ones(len(ids), bool)
    repeated[first_of_pair] = False  # the same (subject, split) again
    listed, n_splits = np.unique(ids[~repeated], return_counts=True)
    twice = listed[n_splits > 1]
    conflict = np.isin(ids, twice)
    if conflict.any():  # report the first row that puts a subject in a second split
        seen: dict[int, str] = {}
        rows = table.column(SOURCE_ROW).to_numpy()
        first = next(
            rows[r]
            for r, (i, s) in enumerate(zip(ids.tolist(), split.tolist(), strict=True))
            if seen.setdefault(i, s) != s
        )
        bad.fault(
            path,
            f"row {first}, field split",
            f"subject listed in two splits; a subject belongs to exactly one split ({len(twice)} "
            "subject(s); all their rows are left out)",
            count=len(twice),
        )
    table = _drop_rows(
        table.filter(pa.array(~conflict)),
        repeated[~conflict],
        path,
        "subject_id",
        "subject listed twice in the same split; each subject has one row",
        bad,
    )
    split = np.asarray(table.column("split").to_pylist(), dtype=object)
    meds_split = np.isin(split, c.SPLITS)
    other = table.column("subject_id").to_numpy()[~meds_split]
    if len(other):
        log.warning(
            "%s: %d subject(s) are in split(s) %s, not one of %s: not used by medweave",
            path,
            len(other),
            sorted(set(split[~meds_split].tolist())),
            list(c.SPLITS),
        )
    kept = table.filter(pa.array(meds_split)).drop_columns([SOURCE_ROW])
    return Splits(kept, np.unique(np.concatenate([twice, other])))


def misnamed_split(name: str) -> str | None:
    """The MEDS split a non-MEDS split name most likely means ("test" -> held_out), or None for
    a custom split (MEDS allows them; medweave leaves their subjects out)."""
    if name in c.SPLITS:
        return None
    return SPLIT_ALIASES.get(name.strip().lower()) or next(
        iter(difflib.get_close_matches(name.lower(), c.SPLITS, n=1, cutoff=0.75)), None
    )


def _refuse_misnamed_splits(path: Path, split: np.ndarray, rows: np.ndarray) -> None:
    for name in sorted(set(split.tolist()) - set(c.SPLITS)):
        meant = misnamed_split(name)
        if meant:
            row = int(rows[np.flatnonzero(split == name)[0]])
            raise MedweaveError(
                f"{path}: row {row}, field split: '{name}' is not a MEDS split name; did you mean "
                f"'{meant}'? MEDS splits are {list(c.SPLITS)} (other names are allowed as custom "
                "splits, whose subjects medweave leaves out)"
            )


# -------------------------------------------------------------------------------------- labels
def labels_base(root: Path, labels_dir: str | None = None) -> Path:
    """The folder label files sit in: ``labels/`` in the cohort, or ``labels_dir`` (relative to
    the cohort, or absolute: labels made by a labeller outside the export)."""
    if not labels_dir:
        return root / c.LABELS_DIR
    base = Path(labels_dir).expanduser()
    return base if base.is_absolute() else root / base


def label_files(root: Path, task: str, labels_dir: str | None = None) -> list[Path]:
    """``<base>/<task>.parquet``, or every shard of a ``<base>/<task>/`` folder."""
    base = labels_base(root, labels_dir)
    single, folder = base / f"{task}.parquet", base / task
    if single.is_file():
        return [single]
    shards = sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
    if shards:
        return shards
    available = sorted(
        {p.stem for p in base.glob("*.parquet")}
        | {p.name for p in base.iterdir() if p.is_dir() and any(p.rglob("*.parquet"))}
        if base.is_dir()
        else set()
    )
    hint = c.did_you_mean(task, available)
    raise MedweaveError(
        f"cohort '{root}' has no labels for task '{task}': expected {single} or parquet shards in "
        f"{folder}/ (set data.labels_dir if labels live elsewhere); tasks available: {available}.{hint}"
    )


def read_labels(
    root: Path,
    task: str,
    values: tuple[str, ...] = ("boolean_value",),
    *,
    bad: BadInput | None = None,
    labels_dir: str | None = None,
    label_rows: str = "error",
    task_type: str | None = None,
) -> pa.Table:
    """The labels of ``task`` in the MEDS label schema, one row per subject.

    ``values`` are the columns the task type reads: each must exist, and a row with a null there
    is a fault. Survival labels (``task_type="survival"``) also need float_value (days to event or
    censoring) finite and >= 0. A subject with the same prediction_time twice is a fault (the
    later row is the one reported and dropped). A subject with several prediction times is
    resolved by ``label_rows``: ``first`` or ``last`` keeps the earliest or latest, ``error``
    (the default) refuses. The table carries _source_file/_source_row so that later faults can
    name where a row came from.
    """
    if label_rows not in LABEL_ROWS:
        raise MedweaveError(f"data.label_rows={label_rows}: expected one of {list(LABEL_ROWS)}")
    bad = bad or BadInput()
    files = label_files(root, task, labels_dir)
    wanted = ("subject_id", "prediction_time", *LABEL_VALUE_COLUMNS)
    tables = []
    for path in files:
        table = _read_columns(path, wanted, bad, "MEDS labels")
        if table is not None:
            table = _conform_labels(path, table, values, task_type, bad)
        if table is not None:
            tables.append(table.append_column(SOURCE_FILE, pa.array([str(path)] * table.num_rows)))
    if not tables:
        raise MedweaveError(f"no label file of task '{task}' could be read ({files[0].parent})")
    table = pa.concat_tables(tables, promote_options="permissive")
    return _one_row_per_subject(table, label_rows, bad)


def _conform_labels(path: Path, table: pa.Table, values, task_type, bad: BadInput) -> pa.Table | None:
    c.require_columns(table, c.REQUIRED_COLUMNS["labels"], path)
    missing = [v for v in values if v not in table.column_names]
    if missing:  # a whole task's worth of targets is absent: no mode can go on
        raise MedweaveError(
            f"{path}: column {', '.join(missing)} missing; a {task_type or 'this'} task needs "
            f"{list(values)} (MEDS label schema: subject_id, prediction_time and one of "
            f"{list(LABEL_VALUE_COLUMNS)})"
        )
    kind = table.schema.field("subject_id").type
    if not pa.types.is_integer(kind):
        raise MedweaveError(f"{path}: column subject_id has type {kind}; expected int64 (MEDS)")
    label_types = {f.name: f.type for f in c.LABEL_SCHEMA}
    for name in LABEL_VALUE_COLUMNS:
        if name in table.column_names:
            try:
                column = table.column(name).cast(label_types[name], safe=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise MedweaveError(
                    f"{path}: column {name} has type {table.schema.field(name).type}; "
                    f"expected {label_types[name]} (MEDS label schema)"
                ) from None
            table = table.set_column(table.column_names.index(name), name, column)
    table = table.set_column(0, "subject_id", table.column("subject_id").cast(pa.int64()))
    table = table.append_column(SOURCE_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    table = _timestamps(path, table, "prediction_time", bad)
    if table is None:
        return None
    for name in ("subject_id", "prediction_time"):
        table = _drop_rows(table, _is_null(table.column(name)), path, name, f"{name} is null", bad)
    for name in values:
        table = _drop_rows(
            table,
            _is_null(table.column(name)),
            path,
            name,
            f"label is null; a {task_type or 'this'} task needs {name} in every row",
            bad,
        )
    if task_type == "survival":
        days = table.column("float_value").to_numpy(zero_copy_only=False).astype(np.float64)
        table = _drop_rows(
            table,
            ~np.isfinite(days) | (days < 0),
            path,
            "float_value",
            "days to event or censoring must be finite and >= 0",
            bad,
        )
    return table


def _one_row_per_subject(table: pa.Table, label_rows: str, bad: BadInput) -> pa.Table:
    ids = table.column("subject_id").to_numpy()
    when = microseconds(table.column("prediction_time"))
    order = np.lexsort((np.arange(len(ids)), when, ids))  # by subject, then time, then file order
    ids, when = ids[order], when[order]
    same_key = np.r_[False, (ids[1:] == ids[:-1]) & (when[1:] == when[:-1])]
    if same_key.any():  # the same subject and prediction_time twice: report the later row
        at = order[same_key]
        first = int(at.min())
        bad.fault(
            table.column(SOURCE_FILE)[first].as_py(),
            f"row {table.column(SOURCE_ROW)[first].as_py()}, field prediction_time",
            "duplicate label: this subject already has a label at this prediction_time",
            count=len(at),
        )
        order, ids, when = order[~same_key], ids[~same_key], when[~same_key]
    more = np.r_[False, ids[1:] == ids[:-1]]  # a later prediction_time of the same subject
    if more.any():
        if label_rows == "error":
            first = int(order[more].min())
            raise MedweaveError(
                f"{table.column(SOURCE_FILE)[first].as_py()}: row {table.column(SOURCE_ROW)[first].as_py()}, "
                f"field prediction_time: subject already has a label at another prediction_time "
                f"({int(more.sum())} such rows); medweave trains one sample per subject: set "
                "data.label_rows=last (latest prediction_time) or data.label_rows=first (earliest)"
            )
        keep = ~np.r_[ids[1:] == ids[:-1], False] if label_rows == "last" else ~more
        log.info(
            "labels: %d subject(s) have several prediction times; kept the %s of each (data.label_rows=%s), "
            "%d row(s) left out",
            len(np.unique(ids[more])),
            "latest" if label_rows == "last" else "earliest",
            label_rows,
            int((~keep).sum()),
        )
        order = order[keep]
    return table.take(pa.array(np.sort(order)))


def label_source(root: Path, task: str, labels_dir: str | None = None) -> str:
    """How error messages name a task's labels: the file, or the folder of its shards."""
    files = label_files(root, task, labels_dir)
    return str(files[0]) if len(files) == 1 else f"{files[0].parent}/"


# ------------------------------------------------------------------------------------- imaging
def read_imaging_index(root: Path) -> pa.Table:
    path = c.require_file(root, c.IMAGING_INDEX, "the image modality")
    return read_parquet(path, c.REQUIRED_COLUMNS["imaging"])


def microseconds(column) -> np.ndarray:
    """Timestamps as int64 microseconds, whatever unit the file stored (pandas writes ns)."""
    return column.cast(pa.timestamp("us"), safe=False).cast(pa.int64()).to_numpy(zero_copy_only=False)
