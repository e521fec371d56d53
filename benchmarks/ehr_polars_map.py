"""medweave's EHR map stage (``data/ehr/shards.build_unit``) written on polars, to the same bytes.

The comparison engine of ehr_prepare_scale.py: one unit of MEDS shards becomes the same cache
shard folder (``subject_row``, ``offsets``, ``code``, ``value``, ``days``, ``counts``,
``codes.json``, ``info.json``), with the same checks. A file whose parquet footer shows medweave's
types (subject_id int64, time timestamp[us] without zone, code string, numeric_value float or
absent) and no null subject_id or code in any row group is scanned by polars; any other file goes
through medweave's own reader (``meds.read_event_shard``: the MEDS conversions, the one-line
errors, lenient mode), whose table polars takes from there. The relational work (labels joined,
the cut at prediction time, the sort by subject then time, the code dictionary, distinct-subject
counts, the truncation to ``max_events``) runs in polars; the floating-point sums are numpy's
``bincount`` over the same event order, as in medweave, so the sums match to the bit.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.ehr.shards import DONE, Labelled, _save
from medweave.data.readers import meds

NO_TIME = np.iinfo(np.int64).max  # static events sort last (as events.NO_TIME)


def _plain(path: Path) -> bool:
    """Whether the footer shows medweave's event types and no null subject_id or code."""
    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    names = schema.names
    if not {"subject_id", "time", "code"} <= set(names):
        return False
    kinds = {n: schema.field(n).type for n in names}
    if kinds["subject_id"] != pa.int64() or kinds["time"] != pa.timestamp("us"):
        return False
    if kinds["code"] not in (pa.string(), pa.large_string()):
        return False
    if "numeric_value" in kinds and kinds["numeric_value"] not in (pa.float32(), pa.float64()):
        return False
    where = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for g in range(meta.num_row_groups):
        for name in ("subject_id", "code"):
            stats = meta.row_group(g).column(where[name]).statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                return False
    return True


def _events(path: Path, bad: BadInput) -> pl.LazyFrame | None:
    """subject_id, time (int64 us, null = static), code, numeric_value (float32) of one file."""
    if _plain(path):
        frame = pl.scan_parquet(path)
        value = (
            pl.col("numeric_value").cast(pl.Float32)
            if "numeric_value" in pq.read_schema(path).names
            else pl.lit(None, pl.Float32).alias("numeric_value")
        )
    else:  # medweave's reader: conversions, faults, lenient mode
        table = meds.read_event_shard(path, False, bad)
        if table is None:
            return None
        frame, value = pl.from_arrow(table).lazy(), pl.col("numeric_value")
    return frame.select(
        pl.col("subject_id"), pl.col("time").dt.epoch("us").alias("time"), pl.col("code"), value
    )


def build_unit(root: Path, files: list[Path], labelled: Labelled, max_events: int, lenient: bool, out: Path):
    """Write the cache shard of one unit to ``out`` (atomically), as shards.build_unit."""
    bad = BadInput(lenient)
    frames = [f for f in (_events(p, bad) for p in files) if f is not None]
    info = {"files": [f.relative_to(root).as_posix() for f in files], "read": bool(frames)}
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        if frames:
            info.update(_write_unit(frames, labelled, max_events, tmp))
        info["skipped"] = bad.summary()
        (tmp / DONE).write_text(json.dumps(info, sort_keys=True))
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _write_unit(frames: list[pl.LazyFrame], labelled: Labelled, max_events: int, tmp: Path) -> dict:
    """The arrays, counts and code names of one unit's events into ``tmp``; its info fields."""
    labels = pl.LazyFrame(
        {
            "subject_id": labelled.subject_ids.astype(np.int64),
            "row": np.arange(len(labelled.subject_ids), dtype=np.int64),
            "pred": labelled.pred_time.astype(np.int64),
        }
    )
    time, pred = pl.col("time"), pl.col("pred")
    events = (
        pl.concat(frames)
        .join(labels, on="subject_id", how="inner", maintain_order="left")
        .filter(time.is_null() | (time < pred) | (pl.col("code") == c.BIRTH_CODE))
        .collect(engine="streaming")
    )
    born_later = events.filter(time >= pred)  # the only events kept at or after prediction time
    n_later = _count_later(frames, labels)  # every event left out, counted without holding them
    kept = (
        events.filter(time.is_null() | (time < pred))
        .filter(~pl.col("code").str.starts_with(c.NOTE_PREFIX))
        .with_columns(t=time.fill_null(NO_TIME))
        .sort(["row", "t"], maintain_order=True)
    )
    names = kept.get_column("code").unique().sort().to_list()
    kept = kept.select(
        "row",
        pl.col("code").cast(pl.Enum(names)).to_physical().cast(pl.Int32),
        pl.col("numeric_value").fill_null(float("nan")),
        pl.when(time.is_null())
        .then(float("nan"))
        .otherwise((pred - time) / 8.64e10)
        .cast(pl.Float32)
        .alias("days"),
    )
    rows = kept.get_column("row").to_numpy()
    code = kept.get_column("code").to_numpy()
    value = kept.get_column("numeric_value").to_numpy()
    train = labelled.train[rows]
    distinct = (
        kept.filter(pl.Series(train))
        .with_columns(valued=pl.col("numeric_value").is_not_nan())
        .group_by("code")
        .agg(
            pl.col("row").n_unique().alias("subjects"),
            pl.col("row").filter(pl.col("valued")).n_unique().alias("vs"),
        )
    )
    n = len(names)
    counts = np.zeros((n, 5), np.float64)
    where = distinct.get_column("code").to_numpy()
    counts[where, 0] = distinct.get_column("subjects").to_numpy()
    counts[where, 1] = distinct.get_column("vs").to_numpy()
    valued = train & ~np.isnan(value)
    v = value[valued].astype(np.float64)
    counts[:, 2] = np.bincount(code[valued], minlength=n)
    counts[:, 3] = np.bincount(code[valued], v, n)
    counts[:, 4] = np.bincount(code[valued], v**2, n)
    per_row = kept.group_by("row", maintain_order=True).len()
    # the last max_events of each row, the birth event always among them (as shards._last_k)
    birth = pl.col("code") == (names.index(c.BIRTH_CODE) if c.BIRTH_CODE in names else -1)
    truncated = (
        kept.with_columns(
            pinned=birth.cast(pl.Int64).sum().over("row"),
            from_end=(~birth).cast(pl.Int64).cum_sum(reverse=True).over("row"),
        )
        .filter(birth | (pl.col("from_end") <= (max_events - pl.col("pinned")).clip(lower_bound=0)))
        .drop("pinned", "from_end")
    )
    lengths = truncated.group_by("row", maintain_order=True).len().get_column("len").to_numpy()
    _save(tmp, "subject_row", per_row.get_column("row").to_numpy().astype(np.int64))
    _save(tmp, "offsets", np.r_[0, np.cumsum(lengths)].astype(np.int64))
    _save(tmp, "code", truncated.get_column("code").to_numpy())
    _save(tmp, "value", truncated.get_column("numeric_value").to_numpy())
    _save(tmp, "days", truncated.get_column("days").to_numpy())
    _save(tmp, "counts", counts)
    (tmp / "codes.json").write_text(json.dumps(names))
    born_rows = born_later.get_column("row").n_unique()
    return {"later": n_later, "born_later": born_rows, "events": int(lengths.sum())}


def _count_later(frames, labels) -> int:
    """Events of labelled subjects at or after their prediction time (the info's ``later``)."""
    return (
        pl.concat(frames)
        .select("subject_id", "time")
        .join(labels, on="subject_id", how="inner")
        .filter(pl.col("time") >= pl.col("pred"))
        .select(pl.len())
        .collect(engine="streaming")
        .item()
    )
