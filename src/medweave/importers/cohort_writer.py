"""Write imported events as a complete cohort, with bounded memory and nothing half-written.

Importers hand over events in batches; the writer spreads them by subject over ``buckets`` part
files (a subject's events always land in one bucket), and at the end sorts one shard's buckets at
a time into ``data/<k>.parquet``, so memory is bounded by ``buffer_rows`` and ``rows_per_shard``,
never by the input. Everything is written into a temporary sibling of ``out`` that is renamed into
place when the import succeeds; on failure nothing is left at ``out``.

Source subject IDs (FHIR Patient ids, CPR-style pseudonyms) are strings; they become int64
subject_ids through a salted hash, the same for the same ID and salt on every run, and the
mapping is written to a file OUTSIDE the cohort (``<out>.subject_map.parquet`` unless configured),
never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medweave import __version__
from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.errors import MedweaveError
from medweave.folders import replace_folder

log = logging.getLogger(__name__)

UNIT = "unit"  # a MEDS code-modifier column: the unit of numeric_value, as the source gave it
EVENTS_SCHEMA = c.EVENTS_SCHEMA.append(pa.field(UNIT, pa.string()))


@dataclass
class ImportOptions:
    """Settings shared by every importer (configs/import.yaml).

    Args:
        lenient: skip bad resources/rows with a counted warning instead of stopping at the first.
        overwrite: replace an existing ``out`` (and its subject map).
        name: dataset_name in metadata/dataset.json (default: the out folder's name).
        subject_map: where the source ID -> subject_id table goes (default: <out>.subject_map.parquet);
            it must lie outside the cohort, which is meant to be shared without it.
        id_salt: mixed into the hash of source IDs; set a secret per site for real data, since an
            unsalted hash of a short ID (a CPR number) can be reversed by trying every ID.
        split_fractions: share of subjects in train, tuning and held_out.
        split_salt: mixed into the hash that assigns each subject_id a split.
        buffer_rows: events held in memory before they go to part files.
        buckets: part files per flush; a shard is a run of whole buckets.
        rows_per_shard: a data/<k>.parquet file is closed once it holds this many events.
    """

    lenient: bool = False
    overwrite: bool = False
    name: str | None = None
    subject_map: str | None = None
    id_salt: str = "medweave"
    split_fractions: dict = field(
        default_factory=lambda: {c.TRAIN_SPLIT: 0.7, c.TUNING_SPLIT: 0.15, c.HELD_OUT_SPLIT: 0.15}
    )
    split_salt: str = "medweave-split"
    buffer_rows: int = 500_000
    buckets: int = 16
    rows_per_shard: int = 2_000_000

    def check(self) -> None:
        problems = []
        unknown = set(self.split_fractions) - set(c.SPLITS)
        if unknown:
            problems.append(f"split_fractions has {sorted(unknown)}; expected keys from {list(c.SPLITS)}")
        if abs(sum(self.split_fractions.values()) - 1) > 1e-6:
            problems.append(f"split_fractions {dict(self.split_fractions)} must sum to 1")
        if any(v < 0 for v in self.split_fractions.values()):
            problems.append("split_fractions must not be negative")
        for key in ("buffer_rows", "buckets", "rows_per_shard"):
            if getattr(self, key) < 1:
                problems.append(f"{key}={getattr(self, key)}: expected >= 1")
        if problems:
            raise MedweaveError("bad import config: " + "; ".join(problems))


def hashed_subject_id(source_id: str, salt: str) -> int:
    """A non-negative int64 for a source ID: the same for the same ID and salt, in any order."""
    digest = hashlib.blake2b(source_id.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") >> 1


def split_of(subject_ids: np.ndarray, fractions: dict, salt: str) -> np.ndarray:
    """Each subject's split from a hash of its subject_id: stable when subjects are added."""
    u = np.array(
        [
            int.from_bytes(hashlib.blake2b(f"{salt}:{s}".encode(), digest_size=8).digest(), "big") / 2**64
            for s in subject_ids.tolist()
        ]
    )
    names = [s for s in c.SPLITS if fractions.get(s, 0) > 0]
    edges = np.cumsum([fractions[s] for s in names])
    return np.array(names, dtype=object)[np.minimum(np.searchsorted(edges, u, side="right"), len(names) - 1)]


def parent_codes(code: str) -> list[str]:
    """Coarser codes a code belongs to: the ICD-10 three-character category, the ATC subgroup."""
    prefix, sep, value = code.partition("//")
    if not sep:
        return []
    if prefix.startswith("ICD10") and len(value.replace(".", "")) > 3:
        return [f"{prefix}//{value[:3]}"]
    if prefix == "ATC" and len(value) > 4:
        return [f"{prefix}//{value[:4]}"]
    return []


class Skipped:
    """What an import left out and why, per resource type (or table): the summary that is printed
    and written to dataset.json. Reasons never hold IDs, values or file names."""

    def __init__(self, lenient: bool):
        self.bad = BadInput(lenient)
        self.faults: dict[str, Counter] = defaultdict(Counter)  # bad input: warned (lenient) or raised
        self.ignored: dict[str, Counter] = defaultdict(Counter)  # by rule: unmapped types, retracted

    WARN_EACH = 5  # lenient: a warning for the first few of each kind and reason, then counts only

    def fault(self, kind: str, file, where: str, expected: str, count: int = 1) -> None:
        if not self.bad.lenient or self.faults[kind][expected] < self.WARN_EACH:
            self.bad.fault(file, where, expected, count)  # raises in strict mode
        self.faults[kind][expected] += count

    def ignore(self, kind: str, reason: str, count: int = 1) -> None:
        self.ignored[kind][reason] += count

    def as_dict(self) -> dict:
        return {
            "skipped_bad_input": {k: dict(v) for k, v in sorted(self.faults.items())},
            "not_imported": {k: dict(v) for k, v in sorted(self.ignored.items())},
        }


def log_summary(root: Path, summary: dict) -> None:
    """Print what an import read, kept and left out (counts, reasons and code systems only:
    never IDs, values, free text or codes made from it)."""
    log.info("Imported %s subjects, %s events into %s", summary["subjects"], summary["events"], root)
    read, imported = summary.get("resources", {}), summary.get("imported", {})
    if imported:
        log.info("%-28s %9s %9s", "resource type", "read", "imported")
        for kind, n in read.items():
            log.info("%-28s %9d %9d", kind, n, imported.get(kind, 0))
    for manifest in summary.get("manifests", []):
        log.info("Bulk Data manifest (%s): %d output files", manifest["transactionTime"], manifest["outputs"])
    for reason, n in summary.get("skipped_files", {}).items():
        log.info("skipped %d files: %s", n, reason)
    for element, n in summary.get("elements_dropped", {}).items():
        log.info("read as absent: %d x %s", n, element)
    for kind, reasons in summary.get("skipped_bad_input", {}).items():
        for reason, n in reasons.items():
            log.warning("skipped %d %s: %s", n, kind, reason)
    for kind, reasons in summary.get("not_imported", {}).items():
        for reason, n in reasons.items():
            log.info("not imported: %d %s (%s)", n, kind, reason)
    for place, n in summary.get("text_only_codes", {}).items():
        log.info("coded from text (no coding): %d %s", n, place)
    if summary.get("duplicate_notes"):
        log.info("notes written once: %d duplicates left out", summary["duplicate_notes"])
    systems = summary.get("code_systems") or []
    if systems:
        log.info("%-9s %-24s %s", "codes", "prefix", "code system")
        for row in systems:
            mark = (
                ""
                if row["configured"] or row["system"].startswith("(")
                else "  (derived; fhir.code_systems names it)"
            )
            log.info("%9d %-24s %s%s", row["codes"], row["prefix"], row["system"], mark)


class CohortWriter:
    """Collects events and writes the cohort; use as a context manager so a failure cleans up."""

    def __init__(self, out: str | Path, options: ImportOptions, source: str):
        options.check()
        self.options, self.source = options, source
        self.out = Path(out).expanduser().resolve()
        self.map_path = (
            Path(options.subject_map).expanduser().resolve()
            if options.subject_map
            else self.out.with_name(self.out.name + ".subject_map.parquet")
        )
        if self.map_path == self.out or self.out in self.map_path.parents:
            raise MedweaveError(
                f"subject_map={self.map_path} lies inside out={self.out}; the map of source IDs must "
                "stay outside the cohort"
            )
        for path in (self.out, self.map_path):
            if path.exists() and not options.overwrite and (path.is_file() or any(path.iterdir())):
                raise MedweaveError(f"{path} exists; pass overwrite=true to replace it")
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}")
        (self.tmp / "parts").mkdir(parents=True)
        self.pending: list[pa.Table] = []
        self.n_pending = 0
        self.n_parts = 0
        self.n_events = 0
        self.descriptions: dict[str, str | None] = {}
        self.source_ids: dict[str, int] = {}
        self.taken: set[int] = set()

    def __enter__(self) -> CohortWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)  # after finish() it is already gone

    # -- subjects ---------------------------------------------------------------------------
    def subject_id(self, source_id: str) -> int:
        """The int64 subject_id of a source ID (hashed, remembered for the subject map)."""
        sid = self.source_ids.get(source_id)
        if sid is None:
            if not self.source_ids and self.options.id_salt == ImportOptions.id_salt:
                log.warning(  # a national ID has few enough values to be found by trying them all
                    "id_salt is the public default: anyone can recompute subject_ids from source "
                    "IDs; set id_salt to a secret of your site for real data"
                )
            sid = hashed_subject_id(source_id, self.options.id_salt)
            if sid in self.taken:  # two IDs, one hash: never merge two people silently
                raise MedweaveError("two source subject IDs hash to the same subject_id; set another id_salt")
            self.source_ids[source_id] = sid
            self.taken.add(sid)
        return sid

    # -- events -----------------------------------------------------------------------------
    def describe(self, code: str, description: str | None) -> None:
        if description and not self.descriptions.get(code):
            self.descriptions[code] = description
        else:
            self.descriptions.setdefault(code, None)

    def write_rows(self, rows: list[tuple]) -> None:
        """Rows of (subject_id, time, code, numeric_value, text_value, unit); time may be None."""
        if not rows:
            return
        cols = list(zip(*rows, strict=True))
        table = pa.table(
            {
                "subject_id": pa.array(cols[0], pa.int64()),
                "time": pa.array(cols[1], pa.timestamp("us")),
                "code": pa.array(cols[2], pa.string()),
                "numeric_value": pa.array(cols[3], pa.float32()),
                "text_value": pa.array(cols[4], pa.large_string()),
                UNIT: pa.array(cols[5], pa.string()),
            },
            schema=EVENTS_SCHEMA,
        )
        self.write_table(table)

    def write_table(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        for name in ("numeric_value", "text_value", UNIT):
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, EVENTS_SCHEMA.field(name).type))
        table = table.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
        for code in pc.unique(table.column("code")).to_pylist():
            self.descriptions.setdefault(code, None)
        self.pending.append(table)
        self.n_pending += table.num_rows
        self.n_events += table.num_rows
        if self.n_pending >= self.options.buffer_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.n_pending = [], 0
        bucket = table.column("subject_id").to_numpy() % self.options.buckets
        for k in np.unique(bucket):
            part = self.tmp / "parts" / f"b{k:04d}-{self.n_parts:06d}.parquet"
            pq.write_table(table.filter(pa.array(bucket == k)), part)
        self.n_parts += 1

    # -- the end ----------------------------------------------------------------------------
    def finish(self, summary: dict, modalities: list[str] | None = None) -> Path:
        """Shard and sort the events, write metadata, then move the cohort and subject map into
        place. Returns the cohort folder."""
        self._flush()
        if not self.n_events:
            raise MedweaveError(
                f"nothing to import from {self.source}: every input was skipped or held no events "
                f"(skipped: {json.dumps(summary.get('skipped_bad_input', {}))})"
            )
        subject_ids = self._write_shards()
        self._write_splits(subject_ids)
        self._write_codes()
        has_notes = any(code.startswith(c.NOTE_PREFIX) for code in self.descriptions)
        modalities = modalities or [c.EHR_CODES] + ([c.TEXT] if has_notes else [])
        summary = {**summary, "subjects": int(len(subject_ids)), "events": int(self.n_events)}
        self._write_dataset_metadata(summary, modalities)
        map_tmp = self._write_subject_map()
        try:
            replace_folder(self.tmp, self.out)
            if map_tmp is not None:
                os.replace(map_tmp, self.map_path)
            elif self.map_path.exists():  # overwrite=true: a map from an earlier import is stale
                self.map_path.unlink()
        finally:
            if map_tmp is not None and map_tmp.exists():
                map_tmp.unlink()
        return self.out

    def _write_shards(self) -> np.ndarray:
        """data/<k>.parquet: whole buckets, sorted by subject_id then time (static events first)."""
        from tqdm.auto import tqdm

        parts = sorted((self.tmp / "parts").glob("*.parquet"))
        by_bucket: dict[int, list[Path]] = defaultdict(list)
        for part in parts:
            by_bucket[int(part.name[1:5])].append(part)
        (self.tmp / c.EVENTS_DIR).mkdir()
        shard, held, n_held, ids = 0, [], 0, []

        def write(tables: list[pa.Table], k: int) -> None:
            table = pa.concat_tables(tables)
            # static events (no time) first, as MEDS sorts them; a filled key instead of
            # null_placement, whose spelling changed across pyarrow versions
            key = pa.table(
                {
                    "s": table.column("subject_id"),
                    "t": table.column("time").cast(pa.int64()).fill_null(np.iinfo(np.int64).min),
                }
            )
            order = pc.sort_indices(key, sort_keys=[("s", "ascending"), ("t", "ascending")])
            pq.write_table(
                table.take(order), self.tmp / c.EVENTS_DIR / f"{k}.parquet", row_group_size=100_000
            )

        for k in tqdm(sorted(by_bucket), desc="sorting events", unit="bucket", leave=False):
            table = pq.read_table(by_bucket[k], schema=EVENTS_SCHEMA)
            ids.append(pc.unique(table.column("subject_id")).to_numpy())
            held.append(table)
            n_held += table.num_rows
            if n_held >= self.options.rows_per_shard:
                write(held, shard)
                shard, held, n_held = shard + 1, [], 0
        if held:
            write(held, shard)
        shutil.rmtree(self.tmp / "parts")
        return np.unique(np.concatenate(ids))

    def _write_splits(self, subject_ids: np.ndarray) -> None:
        splits = split_of(subject_ids, self.options.split_fractions, self.options.split_salt)
        (self.tmp / "metadata").mkdir(exist_ok=True)
        table = pa.table(
            {
                "subject_id": pa.array(subject_ids, pa.int64()),
                "split": pa.array(splits.tolist(), pa.string()),
            },
            schema=c.SPLITS_SCHEMA,
        )
        pq.write_table(table, self.tmp / c.SUBJECT_SPLITS)

    def _write_codes(self) -> None:
        codes = sorted(self.descriptions)
        table = pa.table(
            {
                "code": codes,
                "description": [self.descriptions[k] for k in codes],
                "parent_codes": [parent_codes(k) for k in codes],
            },
            schema=c.CODES_SCHEMA,
        )
        pq.write_table(table, self.tmp / c.CODES_METADATA)

    def _write_dataset_metadata(self, summary: dict, modalities: list[str]) -> None:
        meta = {
            "dataset_name": self.options.name or self.out.name,
            "dataset_version": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "etl_name": "medweave-import",
            "etl_version": __version__,
            "meds_version": "0.4",
            "created_at": datetime.now(timezone.utc).isoformat(),
            "code_modifier_columns": [UNIT],
            "medweave": {
                "generator": f"medweave.importers.{self.source}",
                "modalities": modalities,
                "split_fractions": dict(self.options.split_fractions),
                "import": summary,
            },
        }
        (self.tmp / c.DATASET_METADATA).write_text(json.dumps(meta, indent=2, default=str))

    def _write_subject_map(self) -> Path | None:
        """The source ID -> subject_id table, in a temp sibling of its final path (moved last)."""
        if not self.source_ids:
            return None
        self.map_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.map_path.with_name(f".{self.map_path.name}.tmp-{uuid.uuid4().hex[:8]}")
        items = sorted(self.source_ids.items(), key=lambda kv: kv[1])
        table = pa.table(
            {
                "subject_id": pa.array([v for _, v in items], pa.int64()),
                "source_id": pa.array([k for k, _ in items], pa.string()),
            }
        )
        pq.write_table(table, tmp)
        return tmp
