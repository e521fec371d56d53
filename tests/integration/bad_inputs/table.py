"""medweave-import format=table: broken registry extracts (CSV and parquet) as they come.

Each case writes a good LPR-style file beside (or inside) the broken one under work/in and
imports the folder to work/out: strict names the file, the row (and CSV line) or header and the
column; lenient leaves the bad rows or file out with a counted warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from tests.integration.bad_inputs import Case

LPR = {"layout": "long", "subject": "PNR", "time": "D_INDDTO", "date_format": "%d/%m/%Y", "code": "C_DIAG"}
LPR_MAPPING = {**LPR, "code_prefix": "ICD10", "strip_code_prefix": "D"}
LABS_MAPPING = {"layout": "long", "subject": "PNR", "time": "DATE", "code": "NPU", "value": "VALUE"}
GOOD_CSV = "PNR,D_INDDTO,C_DIAG\n0101501234,02/01/2020,DI21\n0202602345,03/04/2021,DE11\n"


def labs(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "PNR": ["0101501234", "0202602345", "0303703456"],
            "DATE": pd.to_datetime(["2020-01-02", "2020-02-03", "2020-03-04"]),
            "NPU": ["NPU//NPU27300"] * 3,
            "VALUE": [41.0, 38.5, 52.0],
        }
    )
    return frame.assign(**changes)


def importing(files: dict[str, object], mapping: dict = LPR_MAPPING):
    """make(cohort, work): write ``files`` (name -> CSV text, bytes or a DataFrame for parquet)
    under work/in, and return run(lenient) that imports the folder into work/out."""

    def make(cohort: Path, work: Path):
        folder = work / "in"
        folder.mkdir()
        for name, content in files.items():
            if isinstance(content, pd.DataFrame):
                content.to_parquet(folder / name)
            elif isinstance(content, bytes):
                (folder / name).write_bytes(content)
            else:
                (folder / name).write_text(content)

        def run(lenient: bool):
            from medweave.importers import ImportOptions
            from medweave.importers.table import import_table

            return import_table(folder, mapping, work / "out", ImportOptions(lenient=lenient))

        return run

    return make


def truncated_parquet() -> bytes:
    import io

    buffer = io.BytesIO()
    labs().to_parquet(buffer)
    return buffer.getvalue()[:-40]


def events(n: int, codes: set[str] | None = None):
    """check_lenient: ``n`` events were imported (and, if given, exactly these codes)."""

    def check(out: Path) -> None:
        table = pq.read_table(out / "data")
        assert table.num_rows == n, table.num_rows
        if codes is not None:
            assert set(table.column("code").to_pylist()) == codes
        summary = json.loads((out / "metadata/dataset.json").read_text())["medweave"]["import"]
        assert summary["skipped_bad_input"], summary

    return check


CASES = [
    Case(
        "missing-mapped-column",
        importing({"a.csv": GOOD_CSV, "b.csv": "PNR,D_INDDTO,DIAGNOSE\n0101501234,02/01/2020,DI10\n"}),
        ("b.csv", "header", "missing mapped column(s) ['C_DIAG']"),
        check_lenient=events(2, {"ICD10//I21", "ICD10//E11"}),
    ),
    Case(
        "unparseable-date",
        importing({"a.csv": GOOD_CSV + "0303703456,31/02/2020,DI10\n"}),
        ("a.csv", "row 2 (line 4), field D_INDDTO", "expected a date like ['%d/%m/%Y']"),
        check_lenient=events(2, {"ICD10//I21", "ICD10//E11"}),
    ),
    Case(
        "empty-date-cell",
        importing({"a.csv": GOOD_CSV + "0303703456,,DI10\n"}),
        ("a.csv", "row 2 (line 4), field D_INDDTO", "expected a date, found an empty cell"),
        check_lenient=events(2),
    ),
    Case(
        "value-column-holds-text",
        importing({"labs.parquet": labs(VALUE=["41.0", "high", "52,0"])}, LABS_MAPPING),
        ("labs.parquet", "row 1, field VALUE", "expected a number"),
        check_lenient=events(2),  # 41.0 and the decimal comma 52,0 are numbers; "high" is not
    ),
    Case(
        "empty-file",
        importing({"a.csv": GOOD_CSV, "empty.csv": ""}),
        ("empty.csv", "file", "the file is empty"),
        check_lenient=events(2),
    ),
    Case(
        "truncated-parquet",
        importing({"a.parquet": labs(), "b.parquet": truncated_parquet()}, LABS_MAPPING),
        ("b.parquet", "file", "expected a readable parquet file"),
        check_lenient=events(3),
    ),
    Case(
        "subject-column-with-nulls",
        importing({"labs.parquet": labs(PNR=["0101501234", None, "0303703456"])}, LABS_MAPPING),
        ("labs.parquet", "row 1, field PNR", "expected a subject ID, found an empty cell"),
        check_lenient=events(2),
    ),
    Case(
        "csv-row-with-too-few-cells",
        importing({"a.csv": GOOD_CSV + "0303703456,05/06/2021\n"}),
        ("a.csv", "line 4", "expected 3 cells, found 2"),
        check_lenient=events(2),
    ),
    Case(
        "kept-subject-ids-not-integers",
        importing({"a.csv": GOOD_CSV.replace("0202602345", "AB12")}, {**LPR_MAPPING, "subject_ids": "keep"}),
        ("a.csv", "row 1 (line 3), field PNR", "expected an integer subject_id"),
        check_lenient=events(1, {"ICD10//I21"}),
    ),
    Case(
        "mapping-with-a-misspelt-key",
        importing({"a.csv": GOOD_CSV}, {**LPR_MAPPING, "subjcet_ids": "hash"}),
        ("bad mapping", "subjcet_ids: unknown key", "did you mean 'subject_ids'?"),
        lenient=False,
    ),
]
