"""Registry extracts (CSV or parquet; long or wide) -> MEDS events, by a small mapping YAML.

Danish-style registry extracts come as tables: LPR diagnoses (a person key, a date, an ICD-10
code written "DI219"), LMDB prescriptions (ATC codes), lab results (NPU codes with values), and a
person table (sex, birth date). A mapping names, per table, which column is which:

    tables:
      - files: "lpr_*.csv"        # glob inside the input folder (leave out for a single file)
        layout: long              # long: one row per event; wide: one column per measurement
        subject: PNR              # the person column
        subject_ids: hash         # hash: string IDs -> int64 (map written outside the cohort);
                                  # keep: the column already holds int64 subject_ids
        time: D_INDDTO            # event date/time column
        date_format: "%d/%m/%Y"   # strptime format(s); default ISO dates and date-times
        code: C_DIAG              # long: the code column
        code_prefix: ICD10        # "ICD10//" + the code (wide: "<prefix>//<column>")
        strip_code_prefix: "D"    # LPR's leading D before ICD-10 codes
        value: null               # long: numeric value column (decimal point or comma)
        unit: null                # long: unit column
        text: null                # long: note text column (text_value; use code_prefix NOTE)
        columns: null             # wide: measurement columns (null: every column not mapped above)
        static: {}                # column -> prefix: "<prefix>//<value>" with no time (sex)
        birth: null               # column with birth dates -> MEDS_BIRTH
        delimiter: ","            # CSV only

configs/import/*.yaml ship examples. CSV is read with pyarrow's streaming reader and parquet one
row group batch at a time, every column as written (CSV cells as strings), so memory stays
bounded and nothing is guessed: codes keep leading zeros, dates are parsed by the given format.
Rows are named by their number (from 0, as pyarrow and pandas count; CSV adds its line), never
by a value, since a cell may hold a person's ID or birth date.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medweave.data import contract as c
from medweave.errors import MedweaveError
from medweave.importers.cohort_writer import CohortWriter, ImportOptions, Skipped, log_summary

log = logging.getLogger(__name__)

ISO_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M")
NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
BATCH_ROWS = 65_536


@dataclass
class TableSpec:
    """One table of a mapping (see the module docstring for each key)."""

    subject: str
    layout: str = "long"
    files: str | None = None
    subject_ids: str = "hash"
    time: str | None = None
    date_format: str | list | None = None
    code: str | None = None
    code_prefix: str | None = None
    strip_code_prefix: str | None = None
    value: str | None = None
    unit: str | None = None
    text: str | None = None
    columns: list | None = None
    static: dict = field(default_factory=dict)
    birth: str | None = None
    delimiter: str = ","

    def formats(self) -> tuple[str, ...]:
        if self.date_format is None:
            return ISO_FORMATS
        return (self.date_format,) if isinstance(self.date_format, str) else tuple(self.date_format)

    def problems(self, name: str) -> list[str]:
        out = []
        if self.layout not in ("long", "wide"):
            out.append(f"{name}.layout={self.layout!r}: expected 'long' or 'wide'")
        if self.subject_ids not in ("hash", "keep"):
            out.append(f"{name}.subject_ids={self.subject_ids!r}: expected 'hash' or 'keep'")
        if self.layout == "long" and not self.code:
            out.append(f"{name}: a long table needs 'code' (the code column)")
        if self.layout == "long" and self.code and not self.time:
            out.append(f"{name}: a long table needs 'time' (the event date column)")
        if self.layout == "wide" and (self.columns is None or self.columns) and not self.time:
            out.append(f"{name}: a wide table with measurement columns needs 'time'")
        if self.layout == "wide" and not self.code_prefix and (self.columns is None or self.columns):
            out.append(f"{name}: a wide table needs 'code_prefix' (codes are '<prefix>//<column>')")
        return out

    def mapped(self) -> list[str]:
        named = [self.subject, self.time, self.code, self.value, self.unit, self.text, self.birth]
        return [n for n in named if n] + list(self.static)


def load_mapping(mapping) -> list[TableSpec]:
    """The table specs of a mapping (a dict, or a YAML file), checked whole: every fault at once."""
    import yaml

    source = mapping
    if isinstance(mapping, (str, Path)):
        path = Path(mapping).expanduser()
        if not path.is_file():
            raise MedweaveError(
                f"mapping {path} does not exist; expected a mapping YAML (see configs/import/)"
            )
        try:
            mapping = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise MedweaveError(f"mapping {path}: not valid YAML ({err})") from None
    if not isinstance(mapping, dict):
        raise MedweaveError(f"mapping {source}: expected a mapping with 'tables:' or one table's keys")
    tables = mapping.get("tables", [mapping]) if "tables" in mapping else [mapping]
    known = [f.name for f in fields(TableSpec)]
    specs, problems = [], []
    for i, table in enumerate(tables):
        name = f"tables[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{name}: expected a mapping of keys")
            continue
        for key in table:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                problems.append(
                    f"{name}.{key}: unknown key" + (f"; did you mean '{near[0]}'?" if near else "")
                )
        if "subject" not in table:
            problems.append(f"{name}: needs 'subject' (the person column)")
            continue
        spec = TableSpec(**{k: v for k, v in table.items() if k in known})
        problems += spec.problems(name)
        specs.append(spec)
    if len(tables) > 1:
        problems += [
            f"tables[{i}]: needs 'files' (a glob)" for i, t in enumerate(tables) if not t.get("files")
        ]
    if problems:
        raise MedweaveError(f"bad mapping {source}: " + "; ".join(problems))
    return specs


def import_table(inputs, mapping, out: str | Path, options: ImportOptions | None = None) -> Path:
    """Import registry tables into a cohort at ``out`` and return it (see the module docstring)."""
    options = options or ImportOptions()
    specs = load_mapping(mapping)
    jobs = _files(inputs, specs)
    skipped = Skipped(options.lenient)
    rows_read = 0
    with CohortWriter(out, options, "table") as writer:
        from tqdm.auto import tqdm

        for path, spec in tqdm(jobs, desc="registry tables", unit="file", leave=False):
            rows_read += _TableReader(path, spec, writer, skipped).run()
        summary = {
            "format": "table",
            "files": len(jobs),
            "layouts": sorted({s.layout for _, s in jobs}),
            "rows_read": rows_read,
            **skipped.as_dict(),
        }
        root = writer.finish(summary)
    log_summary(root, json.loads((root / c.DATASET_METADATA).read_text())["medweave"]["import"])
    return root


def _files(inputs, specs: list[TableSpec]) -> list[tuple[Path, TableSpec]]:
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
        elif path.is_file():
            paths.append(path)
        else:
            raise MedweaveError(f"input {path} does not exist; expected CSV or parquet files or a folder")
    jobs = []
    for path in paths:
        matching = [s for s in specs if s.files is None or path.match(s.files)]
        if len(matching) > 1:
            raise MedweaveError(
                f"{path}: matched by more than one table of the mapping; make 'files' globs distinct"
            )
        if matching:
            jobs.append((path, matching[0]))
    if not jobs:
        raise MedweaveError(f"input {inputs}: no CSV or parquet file matches the mapping's 'files' globs")
    return jobs


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return None


class _TableReader:
    """One file: read in batches, check each mapped column, emit events for the good rows."""

    def __init__(self, path: Path, spec: TableSpec, writer: CohortWriter, skipped: Skipped):
        self.path, self.spec, self.writer, self.skipped = path, spec, writer, skipped
        self.kind = _kind(path) or "csv"
        self.bad_lines: list[tuple[int, int, int]] = []  # CSV rows with the wrong number of cells

    def fault(self, where: str, expected: str, count: int = 1) -> None:
        self.skipped.fault("table rows", self.path, where, expected, count)

    def run(self) -> int:
        batches = self._batches()
        if batches is None:
            return 0
        n, offset = 0, 0
        try:
            for batch in batches:
                self._lines_fault()
                self._batch(pa.Table.from_batches([batch]), offset)
                offset += batch.num_rows
                n += batch.num_rows
            self._lines_fault()
        except (pa.ArrowInvalid, OSError) as err:
            self.skipped.fault(
                "table files", self.path, f"after row {offset}", f"cannot be read further ({_short(err)})"
            )
        return n

    def _lines_fault(self) -> None:
        if self.bad_lines:
            line, want, got = self.bad_lines[0]
            more = len(self.bad_lines)
            self.bad_lines = []
            self.fault(f"line {line}", f"expected {want} cells, found {got}", more)

    def _batches(self):
        """An iterator of record batches, or None (after a fault) when the file cannot be opened."""
        spec = self.spec
        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                file = pq.ParquetFile(self.path)
                names = file.schema_arrow.names
                self._check_columns(names)
                return file.iter_batches(batch_size=BATCH_ROWS, columns=self._wanted(names))
            from pyarrow import csv

            delimiter = "\t" if self.path.name.lower().endswith(".tsv") else spec.delimiter
            parse = csv.ParseOptions(delimiter=delimiter, invalid_row_handler=self._bad_row)
            quiet = csv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda row: "skip")
            with csv.open_csv(self.path, parse_options=quiet) as probe:
                names = probe.schema.names
            self._check_columns(names)
            wanted = self._wanted(names)
            convert = csv.ConvertOptions(
                column_types=dict.fromkeys(wanted, pa.string()),
                include_columns=wanted,
                strings_can_be_null=True,
            )
            return csv.open_csv(
                self.path,
                read_options=csv.ReadOptions(block_size=1 << 22, use_threads=False),  # line numbers
                parse_options=parse,
                convert_options=convert,
            )
        except _MissingColumns as err:
            self.skipped.fault("table files", self.path, "header", str(err))
        except (pa.ArrowInvalid, OSError) as err:
            empty = "empty" in str(err).lower()
            expected = (
                "the file is empty; expected a header row and data rows"
                if empty
                else f"expected a readable {self.kind} file ({_short(err)})"
            )
            self.skipped.fault("table files", self.path, "file", expected)
        return None

    def _bad_row(self, row) -> str:
        self.bad_lines.append((row.number, row.expected_columns, row.actual_columns))
        return "skip"

    def _check_columns(self, names: list[str]) -> None:
        missing = [n for n in self.spec.mapped() + list(self.spec.columns or []) if n not in names]
        if missing:
            raise _MissingColumns(f"missing mapped column(s) {missing}; the file has {names}")

    def _wanted(self, names: list[str]) -> list[str]:
        spec = self.spec
        if spec.layout == "wide":
            measured = (
                spec.columns if spec.columns is not None else [n for n in names if n not in spec.mapped()]
            )
            self.measured = list(measured)
            return spec.mapped() + [m for m in measured if m not in spec.mapped()]
        self.measured = []
        return spec.mapped()

    # -- one batch ----------------------------------------------------------------------------
    def _where(self, rows: np.ndarray, offset: int, column: str) -> str:
        row = offset + int(rows[0])
        line = f" (line {row + 2})" if self.kind == "csv" else ""
        return f"row {row}{line}, field {column}"

    def _check(self, bad: np.ndarray, offset: int, column: str, expected: str) -> np.ndarray:
        rows = np.flatnonzero(bad)
        if len(rows):
            self.fault(self._where(rows, offset, column), expected, len(rows))
        return ~bad

    def _batch(self, table: pa.Table, offset: int) -> None:
        spec, n = self.spec, table.num_rows
        if not n:
            return
        good = np.ones(n, bool)
        subject = table.column(spec.subject)
        good &= self._check(
            _is_null(subject), offset, spec.subject, "expected a subject ID, found an empty cell"
        )
        sid, ok = self._subject_ids(subject)
        good &= self._check(
            ~ok & good, offset, spec.subject, "expected an integer subject_id (subject_ids: keep)"
        )
        time = None
        if spec.time:
            time, ok = self._times(table.column(spec.time))
            empty = _is_null(table.column(spec.time))
            good &= self._check(empty & good, offset, spec.time, "expected a date, found an empty cell")
            good &= self._check(
                ~ok & ~empty & good, offset, spec.time, f"expected a date like {list(spec.formats())}"
            )
        events: list[pa.Table] = []
        if spec.birth:
            birth, ok = self._times(table.column(spec.birth))
            ok &= ~_is_null(table.column(spec.birth))
            good &= self._check(
                ~ok & good, offset, spec.birth, f"expected a birth date like {list(spec.formats())}"
            )
            events.append(_events(sid, birth, c.BIRTH_CODE, good))
            self.writer.describe(c.BIRTH_CODE, "Birth")
        for column, prefix in spec.static.items():
            values = table.column(column).cast(pa.string())
            keep = good & ~_is_null(values)
            codes = pc.binary_join_element_wise(pa.scalar(f"{prefix}//"), values, "")
            events.append(_events(sid, pa.nulls(n, pa.timestamp("us")), codes, keep))
        if spec.layout == "long" and spec.code:
            events.append(self._long(table, offset, sid, time, good))
        for column in self.measured:
            values, ok = _numbers(table.column(column))
            present = ~_is_null(table.column(column))
            good_col = self._check(present & ~ok & good, offset, column, "expected a number") & good
            code = f"{spec.code_prefix}//{column}"
            self.writer.describe(code, column)
            events.append(_events(sid, time, code, good_col & present, numeric=values))
        for table_out in events:
            self.writer.write_table(table_out)

    def _long(self, table, offset, sid, time, good) -> pa.Table:
        spec = self.spec
        code = table.column(spec.code).cast(pa.string())
        good &= self._check(_is_null(code) & good, offset, spec.code, "expected a code, found an empty cell")
        code = pc.utf8_trim_whitespace(code)
        if spec.strip_code_prefix:
            code = pc.replace_substring_regex(code, f"^{re.escape(spec.strip_code_prefix)}", "")
        if spec.code_prefix:
            code = pc.binary_join_element_wise(pa.scalar(f"{spec.code_prefix}//"), code, "")
        numeric = None
        if spec.value:
            numeric, ok = _numbers(table.column(spec.value))
            present = ~_is_null(table.column(spec.value))
            good &= self._check(
                present & ~ok & good, offset, spec.value, "expected a number (or an empty cell)"
            )
        unit = table.column(spec.unit).cast(pa.string()) if spec.unit else None
        text = table.column(spec.text).cast(pa.large_string()) if spec.text else None
        return _events(sid, time, code, good, numeric=numeric, text=text, unit=unit)

    def _subject_ids(self, column) -> tuple[pa.Array, np.ndarray]:
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if self.spec.subject_ids == "keep":
            if pa.types.is_integer(column.type):
                ints = column.cast(pa.int64())
                return ints, np.ones(len(column), bool)
            text = pc.utf8_trim_whitespace(column.cast(pa.string()))
            ok = (
                pc.match_substring_regex(text, r"^[-+]?\d{1,18}$")
                .fill_null(False)
                .to_numpy(zero_copy_only=False)
            )
            ints = pc.if_else(pa.array(ok), text, pa.scalar("0")).cast(pa.int64())
            return ints, ok | _is_null(column)
        text = pc.utf8_trim_whitespace(column.cast(pa.string()))
        unique = pc.unique(text).drop_null()
        ids = pa.array([self.writer.subject_id(k) for k in unique.to_pylist()], pa.int64())
        index = pc.index_in(text, unique).fill_null(0)
        taken = ids.take(index) if len(ids) else pa.array(np.zeros(len(text), np.int64))
        return taken, np.ones(len(text), bool)

    def _times(self, column) -> tuple[pa.Array, np.ndarray]:
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
            out = column.cast(pa.timestamp("us"))
            return out, ~_is_null(out)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            return pa.nulls(len(column), pa.timestamp("us")), np.zeros(len(column), bool)
        # Python's strptime on each distinct value: strict (pyarrow's rolls 31/02 over to 02/03)
        text = pc.utf8_trim_whitespace(column)
        unique = pc.unique(text).drop_null()
        parsed = pa.array(
            [_parse_date(v, self.spec.formats()) for v in unique.to_pylist()], pa.timestamp("us")
        )
        out = (
            parsed.take(pc.index_in(text, unique)) if len(unique) else pa.nulls(len(text), pa.timestamp("us"))
        )
        return out, ~_is_null(out)


class _MissingColumns(Exception):
    pass


def _parse_date(value: str, formats: tuple[str, ...]) -> datetime | None:
    for fmt in formats:
        try:
            return datetime.strptime(value, fmt)
        except ValueError:
            continue
    return None


def _is_null(column) -> np.ndarray:
    return np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool)


def _numbers(column) -> tuple[pa.Array, np.ndarray]:
    """float64 values and which cells parsed (decimal point or comma; empty cells are null, ok)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_decimal(column.type)
    ):
        return column.cast(pa.float64()), np.ones(len(column), bool)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return pa.nulls(len(column), pa.float64()), _is_null(column)
    text = pc.replace_substring(pc.utf8_trim_whitespace(column), ",", ".")
    ok = pc.match_substring_regex(text, NUMBER).fill_null(False).to_numpy(zero_copy_only=False)
    values = pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string())).cast(pa.float64())
    return values, ok | _is_null(column)


def _events(sid, time, code, keep: np.ndarray, numeric=None, text=None, unit=None) -> pa.Table:
    n = len(keep)
    code = pa.array([code] * n, pa.string()) if isinstance(code, str) else code
    table = pa.table(
        {
            "subject_id": sid,
            "time": time if time is not None else pa.nulls(n, pa.timestamp("us")),
            "code": code,
            "numeric_value": numeric if numeric is not None else pa.nulls(n, pa.float64()),
            "text_value": text if text is not None else pa.nulls(n, pa.large_string()),
            "unit": unit if unit is not None else pa.nulls(n, pa.string()),
        }
    )
    return table.filter(pa.array(keep))


def _short(err: Exception) -> str:
    """What kind of read error it was, without its details: those may quote a row of the file."""
    return str(err).split(":")[0].splitlines()[0][:80]
