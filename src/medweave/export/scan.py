"""What must never leave, looked for in one file's content: subject IDs, dates, subject-level rows.

Every check returns the reasons a file fails (empty when it passes). A reason says what was found
and where (line, column or key), never the offending value: the manifest and the log leave too.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

# A column or key that names a person (MEDS subject_id, FHIR patient, Danish CPR/PNR, a medical
# record number). Matched against the whole name, lower-cased, "-" and " " read as "_".
ID_NAME = re.compile(
    r"(subject|patient|person|participant|individual|sample|case)(_?(id|ids|key|no|number))?"
    r"|pid|cpr|cpr_?nr|pnr|mrn|ssn|nhs_?number|personnummer"
)
# Columns a per-subject output has (medweave-predict's, and the usual names of others).
ROW_NAME = re.compile(r"score|risk|prediction|predicted|target|label|event|event_time|prediction_time|time")
DATE = re.compile(  # ISO dates and datetimes (2020-01-31, 2020-01-31T08:00), 31.01.2020, 31/01/2020
    r"(?<![\d.])(?:(?:1[89]|20)\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"|(?:0[1-9]|[12]\d|3[01])[./-](?:0[1-9]|1[0-2])[./-](?:1[89]|20)\d{2})(?!\d)"
)
BIRTH = re.compile(r"birth|born|dob|f(?:ø|oe)dsel", re.I)
CPR = re.compile(r"(?<![\w.])(?:0[1-9]|[12]\d|3[01])(?:0[1-9]|1[0-2])\d{2}-?\d{4}(?![\w.])")
INTEGER = re.compile(r"(?<![\w.])\d{4,}(?![\w.])")
MIN_ID_DIGITS = 4  # shorter cohort IDs would match every count in a table: checked by name only
TEXT_SUFFIXES = {".json", ".html", ".htm", ".yaml", ".yml", ".txt", ".md", ".csv", ".tsv", ".svg", ".log"}
TABLE_SUFFIXES = {".csv", ".tsv", ".parquet"}


@dataclass
class Cohort:
    """What the checks know of the cohort: its subject IDs (as text) and split sizes, when the
    run's ``data.root`` is reachable; empty otherwise (IDs are then found by pattern only)."""

    ids: set[str] = field(default_factory=set)
    sizes: set[int] = field(default_factory=set)

    @classmethod
    def read(cls, root: str | None) -> Cohort | None:
        if not root:
            return None
        splits = Path(root).expanduser() / "metadata" / "subject_splits.parquet"
        if not splits.is_file():
            return None
        import pyarrow.parquet as pq

        table = pq.read_table(splits, columns=["subject_id", "split"]).to_pandas()
        ids = {str(s) for s in table.subject_id.tolist() if len(str(s)) >= MIN_ID_DIGITS}
        sizes = {len(table), *table.split.value_counts().tolist()}
        return cls(ids, sizes)


def _name(name: str) -> str:
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


def is_id_name(name: str) -> bool:
    return bool(ID_NAME.fullmatch(_name(name)))


def text_problems(text: str, cohort: Cohort | None) -> list[str]:
    """Dates (birth dates named as such), CPR-like numbers and the cohort's subject IDs in text."""
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for match in DATE.finditer(line):
            before = line[max(0, match.start() - 40) : match.start()]
            kind = "a birth date" if BIRTH.search(before) else "a date"
            problems.append(f"{kind} (line {lineno})")
            break
        if CPR.search(line):
            problems.append(f"a CPR-like personal number (line {lineno})")
        if cohort and cohort.ids and any(m.group() in cohort.ids for m in INTEGER.finditer(line)):
            problems.append(f"a subject ID of the cohort (line {lineno})")
    return _first(problems)


def _first(problems: list[str], keep: int = 3) -> list[str]:
    """The first few reasons, and how many more: a file with a date on every line is one item."""
    if len(problems) <= keep:
        return problems
    return [*problems[:keep], f"and {len(problems) - keep} more"]


def json_problems(value, cohort: Cohort | None, where: str = "") -> list[str]:
    """Keys that name a person, and lists of records that look like one row per subject."""
    problems = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if is_id_name(key):
                problems.append(f"key '{here}' names a subject identifier")
            problems += json_problems(item, cohort, here)
    elif isinstance(value, list):
        records = [v for v in value if isinstance(v, dict | list)]
        if records and cohort and len(value) in cohort.sizes and len(value) > 1:
            problems.append(f"'{where or 'the top level'}' lists one record per subject ({len(value)})")
        for item in records[:1000]:
            problems += json_problems(item, cohort, f"{where}[]")
    return _first(sorted(set(problems)))


def table_problems(path: Path, cohort: Cohort | None) -> list[str]:
    """A table (CSV, TSV, parquet) is subject-level if a column names a person, holds the
    cohort's IDs or dates, has one row per subject of the cohort or a split, or has the columns
    of a per-subject output (a score or target per row)."""
    import pandas as pd

    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str)
    except Exception as err:  # pandas raises many types for a bad file
        return [f"not a readable table ({type(err).__name__})"]
    problems = [f"column '{c}' names a subject identifier" for c in frame.columns if is_id_name(c)]
    per_row = [c for c in frame.columns if ROW_NAME.fullmatch(_name(c))]
    if per_row:
        problems.append(f"per-subject output columns ({', '.join(map(str, per_row))})")
    if cohort and len(frame) in cohort.sizes:
        problems.append(f"one row per subject ({len(frame)} rows, the size of the cohort or a split)")
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            problems.append(f"column '{column}' holds dates")
            continue
        text = values.dropna().astype(str)
        if cohort and cohort.ids and text.isin(cohort.ids).any():
            problems.append(f"column '{column}' holds subject IDs of the cohort")
        elif text.str.contains(DATE).any():
            problems.append(f"column '{column}' holds dates")
    return problems


def png_text(path: Path) -> str:
    """The text chunks of a PNG (tEXt, zTXt, iTXt: where a plotting library writes metadata)."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt":
            out.append(body.replace(b"\0", b": ").decode("latin-1"))
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out.append(f"{key.decode('latin-1')}: {zlib.decompress(rest[1:]).decode('latin-1')}")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            text = rest.split(b"\0", 2)[-1]
            out.append(f"{key.decode()}: {(zlib.decompress(text) if compressed else text).decode()}")
        pos += 12 + length
    return "\n".join(out)


def file_problems(path: Path, cohort: Cohort | None) -> list[str]:
    """The content checks for one file, by kind; a kind these checks cannot read is refused."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        try:
            return text_problems(png_text(path), cohort)
        except (ValueError, zlib.error):
            return ["not a readable PNG file"]
    if suffix not in TEXT_SUFFIXES | TABLE_SUFFIXES:
        return [f"a {suffix or 'suffix-less'} file: its content cannot be checked"]
    problems = table_problems(path, cohort) if suffix in TABLE_SUFFIXES else []
    if suffix == ".parquet":
        return problems
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        return [*problems, "not a text file"]
    problems += text_problems(text, cohort)
    if suffix == ".json":
        try:
            problems += json_problems(json.loads(text), cohort)
        except ValueError:
            problems.append("not valid JSON")
    return problems
