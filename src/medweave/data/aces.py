"""Tasks as data: an ACES task config file (es-aces) labels the cohort, no Python needed.

The file is a plain ACES config (``predicates``, ``trigger``, ``windows``; ``aces-cli`` runs it as it
is) whose ``metadata`` block, which ACES ignores, carries medweave's task keys::

    metadata:
      name: cvd_onset_1y        # the task (label file) name; default: the file's stem
      type: binary              # binary (the label window's predicate) or survival
      monitor: val/auprc        # optional; default: the type's (tasks/types.py)
      survival:                 # type survival only: ACES labels are yes/no over a window, so the
        event: cvd              #   time is medweave's: the first `event` after prediction_time,
        censor: [lost]          #   censored at the first `censor` predicate, else at `end`
        end: 2025-12-31         #   (the data cutoff; null: each subject's last event)

One window names ``index_timestamp`` (the prediction time). Labels are computed shard by shard over
``data/**/*.parquet`` by ACES (a large shard in pieces of whole subjects, ``CHUNK_ROWS`` events
each, so memory is bounded whatever the export's shard size; shards in ``workers`` processes),
and cached as a MEDS label file under ``<cache_dir>/labels/<key>/``, keyed by the file's bytes,
the cohort's fingerprint and the ACES version; from there they take the same path as any MEDS
label file (readers/meds.py). Labels ACES wrote by hand, or any other labeller's, need none of
this: ``data.labels_dir`` points at them.

Faults in the file are one-line errors naming the line and field; a code the cohort never uses is
a warning with the nearest codes it does use (a typo labels nobody, quietly).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import logging
import re
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

LABEL_FORMAT = 1  # bump when the labels computed from the same file change
TOP_KEYS = ("description", "metadata", "predicates", "patient_demographics", "trigger", "windows")
WINDOW_KEYS = ("start", "end", "start_inclusive", "end_inclusive", "has", "label", "index_timestamp")
TASK_KEYS = ("name", "type", "monitor", "survival")
SURVIVAL_KEYS = ("event", "censor", "end")
TYPES = ("binary", "survival")  # ACES labels are booleans; survival adds medweave's time
SPECIAL = ("_ANY_EVENT", "_RECORD_START", "_RECORD_END")
CHUNK_ROWS = 2_000_000  # events ACES is given at once (about 0.7 GB of its memory)


@dataclass(frozen=True)
class Survival:
    event: str
    censor: tuple[str, ...] = ()
    end: dt.datetime | None = None


@dataclass(frozen=True)
class TaskFile:
    """An ACES task config file as medweave reads it (the ACES parse itself: ``aces_config``)."""

    path: Path
    name: str
    type: str
    monitor: str | None
    survival: Survival | None
    raw: dict  # the YAML as plain Python
    lines: dict = field(repr=False, default_factory=dict)  # "windows.target.label" -> line (1-based)

    def where(self, key: str) -> str:
        """``file: line N, field key`` (the nearest enclosing key that has a line)."""
        parts = key.split(".")
        while parts and ".".join(parts) not in self.lines:
            parts.pop()
        line = self.lines.get(".".join(parts))
        return f"{self.path}: " + (f"line {line}, " if line else "") + f"field {key}"


def _fail(task: TaskFile | Path, key: str | None, message: str):
    where = task.where(key) if isinstance(task, TaskFile) else f"{task}: field {key}"
    raise MedweaveError(f"{where}: {message}" if key else f"{task}: {message}")


def _near(word: str, choices) -> str:
    near = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else ""


# ------------------------------------------------------------------------------------- reading
def _load_yaml(path: Path):
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        return YAML(typ="rt", pure=True).load(path.read_text())
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise MedweaveError(f"{path}: {line}not valid YAML ({err.problem or err.context})") from None
    except YAMLError as err:
        raise MedweaveError(f"{path}: not valid YAML ({err})") from None


def _plain_and_lines(node, prefix: str = "", lines: dict | None = None):
    """The ruamel tree as plain dicts/lists, and the line of every mapping key (1-based)."""
    lines = {} if lines is None else lines
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            try:
                lines[name] = node.lc.key(key)[0] + 1
            except (AttributeError, KeyError, TypeError):
                pass
            out[str(key)] = _plain_and_lines(value, name, lines)[0]
        return out, lines
    if isinstance(node, list):
        return [_plain_and_lines(v, prefix, lines)[0] for v in node], lines
    if isinstance(node, dt.date):  # a date is the day's start (survival.end)
        return dt.datetime(node.year, node.month, node.day, *(node.timetuple()[3:6])), lines
    for kind in (bool, str, int, float):  # ruamel's scalar subclasses as plain values
        if isinstance(node, kind):
            return kind(node), lines
    return node, lines


def read_task_file(path: str | Path) -> TaskFile:
    """Read and check the file: every fault at once, each with its line and field."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise MedweaveError(f"{path}: no such ACES task file")
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise MedweaveError(f"{path}: expected a mapping of ACES keys ({', '.join(TOP_KEYS)})")
    raw, lines = _plain_and_lines(data)
    meta = raw.get("metadata") or {}
    task = TaskFile(
        path, str(meta.get("name") or path.stem), str(meta.get("type", "binary")), None, None, raw, lines
    )
    problems = _structure_problems(task, meta)
    if problems:
        raise MedweaveError(f"{path}: " + "; ".join(problems))
    survival = None
    if task.type == "survival":
        spec = meta["survival"]
        censor = spec.get("censor") or ()
        survival = Survival(
            str(spec["event"]), tuple([censor] if isinstance(censor, str) else censor), spec.get("end")
        )
    return TaskFile(path, task.name, task.type, meta.get("monitor"), survival, raw, lines)


def _structure_problems(task: TaskFile, meta) -> list[str]:
    """What ACES would refuse, said with lines (ACES's own parse then checks the rest)."""
    raw, problems = task.raw, []

    def add(key: str, message: str):
        where = task.where(key)[len(str(task.path)) + 2 :]
        problems.append(f"{where}: {message}")

    for key in raw:
        if key not in TOP_KEYS:
            add(key, f"unknown key; an ACES task config has {list(TOP_KEYS)}{_near(key, TOP_KEYS)}")
    if not isinstance(raw.get("trigger"), str):
        add("trigger", "missing or not a predicate name; expected e.g. `trigger: admission`")
    predicates = raw.get("predicates") or {}
    if not isinstance(predicates, dict):
        add("predicates", "expected a mapping of predicate name -> {code: ...} or {expr: ...}")
        predicates = {}
    for name, spec in predicates.items():
        if not re.fullmatch(r"\w+", name):
            add(f"predicates.{name}", "predicate names are letters, digits and '_'")
        if not isinstance(spec, dict) or not ({"code", "expr"} & set(spec)):
            add(f"predicates.{name}", "expected {code: <MEDS code>} or {expr: <and(...)/or(...)>}")
        elif isinstance(spec.get("code"), dict) and "regex" in spec["code"]:
            try:
                re.compile(str(spec["code"]["regex"]))
            except re.error as err:
                add(
                    f"predicates.{name}.code", f"regex '{spec['code']['regex']}' is not a valid regex ({err})"
                )
    known = set(predicates) | set(raw.get("patient_demographics") or {}) | set(SPECIAL)
    trigger = raw.get("trigger")
    if isinstance(trigger, str) and trigger not in known:
        add("trigger", f"predicate '{trigger}' is not defined in predicates{_near(trigger, known)}")
    windows = raw.get("windows") or {}
    if not isinstance(windows, dict) or not windows:
        add("windows", "missing; expected at least one window (start, end, ...)")
        windows = {}
    indexed = []
    for name, spec in windows.items():
        if not isinstance(spec, dict):
            add(f"windows.{name}", f"expected a mapping of {list(WINDOW_KEYS)}")
            continue
        for key in spec:
            if key not in WINDOW_KEYS:
                add(
                    f"windows.{name}.{key}",
                    f"unknown window field; expected {list(WINDOW_KEYS)}{_near(key, WINDOW_KEYS)}",
                )
        for pred in list((spec.get("has") or {}).keys()) + ([spec["label"]] if spec.get("label") else []):
            if pred not in known:
                add(f"windows.{name}", f"predicate '{pred}' is not defined in predicates{_near(pred, known)}")
        if spec.get("index_timestamp") is not None:
            indexed.append(name)
            if spec["index_timestamp"] not in ("start", "end"):
                add(f"windows.{name}.index_timestamp", "expected start or end")
    if windows and len(indexed) != 1:
        add(
            "windows",
            "exactly one window needs index_timestamp (start or end: the prediction time); "
            f"found {indexed or 'none'}",
        )
    labelled = [n for n, s in windows.items() if isinstance(s, dict) and s.get("label")]
    if not isinstance(meta, dict):
        add("metadata", "expected a mapping (medweave's task keys: name, type, monitor, survival)")
        return problems
    for key in meta:
        if key not in TASK_KEYS and _near(key, TASK_KEYS):
            add(f"metadata.{key}", f"unknown task key{_near(key, TASK_KEYS)}")
    if task.type not in TYPES:
        add("metadata.type", f"'{task.type}': an ACES task is one of {list(TYPES)}{_near(task.type, TYPES)}")
    if task.type == "binary" and not labelled:
        add("windows", "a binary task needs one window with `label: <predicate>`")
    if task.type == "survival":
        spec = meta.get("survival")
        if not isinstance(spec, dict) or "event" not in spec:
            add(
                "metadata.survival" if "survival" in meta else "metadata.type",
                "a survival task needs metadata.survival: "
                "{event: <predicate>, censor: [...], end: <date or null>}",
            )
            return problems
        for key in spec:
            if key not in SURVIVAL_KEYS:
                add(
                    f"metadata.survival.{key}",
                    f"unknown key; expected {list(SURVIVAL_KEYS)}{_near(key, SURVIVAL_KEYS)}",
                )
        censor = spec.get("censor") or []
        for pred in [spec["event"], *([censor] if isinstance(censor, str) else censor)]:
            if pred not in predicates:
                add(
                    "metadata.survival",
                    f"predicate '{pred}' is not defined in predicates{_near(pred, predicates)}",
                )
        end = spec.get("end")
        if end is not None and not isinstance(end, dt.datetime):
            add(
                "metadata.survival.end",
                f"'{end}': expected a date (2025-12-31) or null (each subject's last event)",
            )
    return problems


def aces_config(task: TaskFile, extra_predicates: tuple[str, ...] = ()):
    """ACES's own parse of the file; ``extra_predicates`` (the survival event and censoring) are
    added, since ACES keeps only the predicates its windows reference."""
    from aces.config import DerivedPredicateConfig, PlainPredicateConfig, TaskExtractorConfig

    try:
        cfg = TaskExtractorConfig.load(task.path)
        if not extra_predicates:
            return cfg
        raw, todo, more = task.raw.get("predicates") or {}, list(extra_predicates), {}
        while todo:
            name = todo.pop()
            if name in cfg.predicates or name in more:
                continue
            spec = raw[name]
            if "expr" in spec:
                more[name] = DerivedPredicateConfig(**spec)
                todo += more[name].input_predicates
            else:
                fields = {k: v for k, v in spec.items() if k in PlainPredicateConfig.__dataclass_fields__}
                more[name] = PlainPredicateConfig(
                    **fields, other_cols={k: v for k, v in spec.items() if k not in fields}
                )
        return TaskExtractorConfig(
            predicates={**cfg.predicates, **more}, trigger=cfg.trigger, windows=cfg.windows
        )
    except (KeyError, ValueError, TypeError) as err:  # ACES's messages name the predicate or window
        message = str(err).strip("\"'").replace("\n", " ")
        named = re.search(r"'(\w+)'", message)
        key = next((k for k in task.lines if named and k.split(".")[-1] == named.group(1)), None)
        _fail(task, key, f"ACES refused the config: {message}")


def task_overrides(path: str | Path) -> list[str]:
    """Hydra overrides for ``task=<this file>``: the task=aces group entry carrying the file."""
    task = read_task_file(path)
    overrides = ["task=aces", f"task.aces={task.path}", f"task.name={task.name}", f"task.type={task.type}"]
    return overrides + ([f"task.monitor={task.monitor}"] if task.monitor else [])


# ------------------------------------------------------------------------------------- labels
def plain_codes(task: TaskFile) -> list[tuple[str, str, dict | str]]:
    """(predicate, line key, code spec) of every plain predicate."""
    out = []
    for group in ("predicates", "patient_demographics"):
        for name, spec in (task.raw.get(group) or {}).items():
            if isinstance(spec, dict) and "code" in spec:
                out.append((name, f"{group}.{name}.code", spec["code"]))
    return out


def cohort_codes(root: Path) -> set[str]:
    """Every code the cohort's events use (one column of each shard read)."""
    from medweave.data.readers.meds import event_files

    codes: set[str] = set()
    for shard in event_files(Path(root)):
        codes |= set(pq.read_table(shard, columns=["code"]).column("code").unique().to_pylist())
    return codes


def absent_codes(task: TaskFile, codes: set[str]) -> list[str]:
    """One warning per predicate code the cohort never uses, with the nearest codes it does."""
    warnings = []
    for _name, key, spec in plain_codes(task):
        if isinstance(spec, dict) and "regex" in spec:
            pattern = re.compile(spec["regex"])
            if not any(pattern.search(code) for code in codes):
                warnings.append(f"{task.where(key)}: regex '{spec['regex']}' matches no code in the cohort")
            continue
        wanted = spec.get("any", []) if isinstance(spec, dict) else [spec]
        for code in map(str, wanted):
            if code not in codes:
                near = difflib.get_close_matches(code, sorted(codes), n=3, cutoff=0.5)
                hint = f"; nearest: {', '.join(near)}" if near else ""
                warnings.append(f"{task.where(key)}: code '{code}' does not occur in the cohort{hint}")
    return warnings


def compute_labels(task: TaskFile, root: Path, workers: int = 1) -> pa.Table:
    """The task's MEDS labels over every event shard of the cohort (subjects never span shards),
    a shard at a time in each of ``workers`` processes: only one shard's events and the labels
    so far are ever held, and the labels are the same whatever the number of workers."""
    import polars as pl

    from medweave.data.readers.meds import event_files

    aces_config(task)  # a fault in the file is said once, here, not once per worker
    shards = event_files(root)
    codes: set[str] = set()
    parts: list = [None] * len(shards)
    bar = tqdm(total=len(shards), desc="ACES labels", unit="shard", leave=False, disable=len(shards) < 2)
    if workers <= 1 or len(shards) <= 1:
        for i, shard in enumerate(shards):
            shard_codes, parts[i] = _label_shard(task, shard)
            codes |= shard_codes
            bar.update()
    else:
        with ProcessPoolExecutor(min(workers, len(shards)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_label_shard, task, shard): i for i, shard in enumerate(shards)}
            for future in as_completed(futures):
                shard_codes, parts[futures[future]] = future.result()  # a failure names its shard
                codes |= shard_codes
                bar.update()
    bar.close()
    for warning in absent_codes(task, codes):
        log.warning("%s", warning)
    parts = [pl.from_arrow(p) for p in parts if p is not None and p.num_rows]
    table = pl.concat(parts, how="diagonal").to_arrow() if parts else None
    if table is None or not table.num_rows:
        survival = " (and a survival.end after the prediction times)" if task.survival else ""
        raise MedweaveError(
            f"{task.path}: ACES found no subject in {root} that matches the trigger and windows{survival}; "
            "see the warnings above for codes the cohort does not use"
        )
    columns = {}
    for f in c.LABEL_SCHEMA:
        columns[f.name] = (
            table.column(f.name).cast(f.type)
            if f.name in table.column_names
            else pa.nulls(table.num_rows, f.type)
        )
    return pa.table(columns, schema=c.LABEL_SCHEMA)


def _label_shard(task: TaskFile, shard: Path, rows: int = CHUNK_ROWS) -> tuple[set[str], pa.Table | None]:
    """(the codes the shard uses, its labels) by ACES over one event shard, ``rows`` events at a
    time: ACES reads a whole file into memory (several times its size: 5 GB for 15 M events),
    so a large shard goes to it as pieces of whole subjects, each written to a temporary file."""
    import tempfile

    import polars as pl

    extra = (task.survival.event, *task.survival.censor) if task.survival else ()
    cfg = aces_config(task, extra)
    codes = set(pq.read_table(shard, columns=["code"]).column("code").unique().to_pylist())
    parts = []
    with tempfile.TemporaryDirectory(prefix="medweave-aces-") as tmp:
        for piece in _pieces(shard, rows, Path(tmp)):
            labels = _aces_labels(task, cfg, piece, shard)
            if labels is not None:
                parts.append(labels)
    return codes, pl.concat(parts, how="diagonal").to_arrow() if parts else None


def _pieces(shard: Path, rows: int, tmp: Path):
    """The shard itself if it is small; else files of about ``rows`` events each, read a batch at
    a time, never splitting a subject (MEDS shards list each subject's events together; a shard
    whose subjects are not in order is given to ACES whole)."""
    file = pq.ParquetFile(shard)
    if file.metadata.num_rows <= rows:
        yield shard
        return
    ids = pq.read_table(shard, columns=["subject_id"]).column("subject_id").to_numpy()
    ordered = not (len(ids) and (ids[1:] < ids[:-1]).any())
    del ids
    if not ordered:
        log.info("%s: subjects not in order: given to ACES whole", shard)
        yield shard
        return
    carry, n = None, 0
    for batch in file.iter_batches(batch_size=rows):
        table = (
            pa.Table.from_batches([batch])
            if carry is None
            else pa.concat_tables([carry, pa.Table.from_batches([batch])])
        )
        sid = table.column("subject_id").to_numpy()
        last = int(np.searchsorted(sid, sid[-1]))  # where the last subject begins: it may go on
        carry = table.slice(last)
        if last:
            yield _write_piece(table.slice(0, last), tmp / f"piece-{n}.parquet")
            n += 1
    if carry is not None and carry.num_rows:
        yield _write_piece(carry, tmp / f"piece-{n}.parquet")


def _write_piece(table: pa.Table, path: Path) -> Path:
    for old in path.parent.glob("piece-*.parquet"):  # the previous piece is done with
        old.unlink()
    pq.write_table(table, path)
    return path


def _aces_labels(task: TaskFile, cfg, path: Path, shard: Path):
    """ACES's labels for the events in ``path`` (a polars frame), or None if it labels nobody."""
    import polars as pl
    from aces import predicates as aces_predicates
    from aces import query as aces_query
    from omegaconf import DictConfig

    logging.getLogger("aces").setLevel(logging.ERROR)  # its lines are per predicate and piece
    try:
        df = aces_predicates.get_predicates_df(cfg, DictConfig({"path": str(path), "standard": "meds"}))
        result = aces_query.query(cfg, df) if df.height else df.head(0)
    except Exception as err:  # noqa: BLE001 - ACES and polars raise plain exceptions here
        message = str(err).replace("\n", " ")
        raise MedweaveError(f"{task.path}: ACES could not label {shard}: {message}") from None
    if not result.height:
        return None
    result = result.rename({"index_timestamp": "prediction_time"})
    if task.survival:
        return _survival(df, result, task.survival)
    return result.select("subject_id", "prediction_time", boolean_value=pl.col("label") > 0)


def _survival(df, result, spec: Survival):
    """Days from prediction_time to the first event (event seen) or censoring, whichever is first."""
    import polars as pl

    later = df.join(result.select("subject_id", "prediction_time"), on="subject_id").filter(
        pl.col("timestamp") > pl.col("prediction_time")
    )
    censored = pl.any_horizontal([pl.col(p) > 0 for p in spec.censor]) if spec.censor else pl.lit(False)
    times = later.group_by("subject_id", "prediction_time").agg(
        event_time=pl.col("timestamp").filter(pl.col(spec.event) > 0).min(),
        censor_time=pl.col("timestamp").filter(censored).min(),
        last=pl.col("timestamp").max(),
    )
    out = result.select("subject_id", "prediction_time").join(
        times, on=["subject_id", "prediction_time"], how="left"
    )
    end = pl.lit(spec.end, pl.Datetime("us")) if spec.end else pl.coalesce("last", "prediction_time")
    stop = pl.min_horizontal(end, pl.coalesce("censor_time", end))
    seen = pl.col("event_time").is_not_null() & (pl.col("event_time") <= stop)
    out = out.with_columns(
        boolean_value=seen,
        float_value=(
            pl.when(seen).then("event_time").otherwise(stop) - pl.col("prediction_time")
        ).dt.total_microseconds()
        / 8.64e10,
    )
    before = out.filter(pl.col("float_value") < 0).height
    if before:
        log.warning("survival: %d prediction time(s) after survival.end: left out", before)
    return out.filter(pl.col("float_value") >= 0).select(
        "subject_id", "prediction_time", "boolean_value", "float_value"
    )


def labels_dir(
    task_path: str | Path, root: Path, cache_dir: Path, fingerprint: str, workers: int = 1
) -> Path:
    """The folder holding ``<task name>.parquet`` as ACES computes it, cached (one builder under a
    lock; built in a temporary sibling and renamed, so nothing half-written is ever read), over
    the shards in ``workers`` processes."""
    from importlib.metadata import version

    task = read_task_file(task_path)
    key_src = json.dumps(
        {
            "format": LABEL_FORMAT,
            "aces": version("es-aces"),
            "file": hashlib.sha256(task.path.read_bytes()).hexdigest(),
            "name": task.name,
            "cohort": fingerprint,
        },
        sort_keys=True,
    )
    key = hashlib.blake2b(key_src.encode(), digest_size=10).hexdigest()
    cache = Path(cache_dir).expanduser().resolve()
    out = cache / "labels" / key  # exists only when complete: the lock and build sit beside it
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".labels-{key}.lock")):
        if (out / f"{task.name}.parquet").exists():
            log.info("Using ACES labels %s", out)
            return out
        tmp = cache / f".labels-{key}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            log.info("ACES: labelling %s over the cohort's event shards", task.name)
            table = compute_labels(task, Path(root), workers)
            pq.write_table(table, tmp / f"{task.name}.parquet")
            (tmp / "task.yaml").write_bytes(task.path.read_bytes())  # what made them
            out.parent.mkdir(exist_ok=True)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    n = pq.read_metadata(out / f"{task.name}.parquet").num_rows
    log.info("ACES labels for %s: %d row(s), in %s", task.name, n, out)
    return out
