"""Registry tables -> MEDS events: long and wide layouts, dates, values, IDs and mapping checks."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pyarrow.parquet as pq
import pytest

from medweave.cli.import_cohort import resolve_mapping
from medweave.errors import MedweaveError
from medweave.importers import ImportOptions
from medweave.importers.table import import_table, load_mapping


def rows(root):
    table = pq.read_table(root / "data").to_pandas()
    out = [
        (t.to_pydatetime() if t == t else None, code, None if v != v else round(float(v), 3))
        for t, code, v in zip(table.time, table.code, table.numeric_value, strict=True)
    ]
    return sorted(out, key=lambda r: (r[0] is not None, r[0] or datetime.min, r[1]))


def test_lpr_diagnoses_with_the_shipped_mapping(tmp_path):
    csv = tmp_path / "lpr_adm.csv"
    csv.write_text("PNR,D_INDDTO,C_DIAG\n0101501234,02/01/2020,DI219\n0101501234,03/04/2021, DE119 \n")
    root = import_table(csv, resolve_mapping("lpr_diagnoses"), tmp_path / "out")
    assert rows(root) == [
        (datetime(2020, 1, 2), "ICD10//I219", None),
        (datetime(2021, 4, 3), "ICD10//E119", None),
    ]
    ids = pq.read_table(tmp_path / "out.subject_map.parquet").to_pylist()
    assert [r["source_id"] for r in ids] == ["0101501234"]  # leading zero kept: read as text
    codes = pq.read_table(root / "metadata/codes.parquet").to_pylist()
    assert {r["code"]: r["parent_codes"] for r in codes}["ICD10//I219"] == ["ICD10//I21"]


def test_wide_labs_with_decimal_commas_kept_ids_and_several_date_formats(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pd.DataFrame(
        {
            "subject": [7, 7, 9],
            "taken": ["2020-01-02", "2020-01-02 08:30:00", "2021-05-06"],
            "NPU27300": ["41,5", None, "39"],
            "NPU01568": ["3.1", "2.9", None],
        }
    ).to_parquet(folder / "labs_wide.parquet")
    mapping = {
        "layout": "wide",
        "subject": "subject",
        "subject_ids": "keep",
        "time": "taken",
        "code_prefix": "NPU",
    }
    root = import_table(folder, mapping, tmp_path / "out")
    assert rows(root) == [
        (datetime(2020, 1, 2), "NPU//NPU01568", 3.1),
        (datetime(2020, 1, 2), "NPU//NPU27300", 41.5),
        (datetime(2020, 1, 2, 8, 30), "NPU//NPU01568", 2.9),
        (datetime(2021, 5, 6), "NPU//NPU27300", 39.0),
    ]
    assert set(pq.read_table(root / "data").column("subject_id").to_pylist()) == {7, 9}
    assert not (tmp_path / "out.subject_map.parquet").exists()  # IDs kept: no map to write


def test_tables_are_routed_by_file_glob_and_person_tables_give_static_events(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "person.csv").write_text("PNR,KOEN,FOED_DAG\nA1,F,1960-02-03\n")
    (folder / "lpr_diag.csv").write_text("PNR,D_INDDTO,C_DIAG\nA1,02/01/2020,DI21\n")
    (folder / "README.txt").write_text("not a table of this mapping\n")
    mapping = {
        "tables": [
            {"files": "person.csv", "layout": "wide", "subject": "PNR", "columns": [],
             "static": {"KOEN": "SEX"}, "birth": "FOED_DAG"},
            {"files": "lpr_diag*.csv", "subject": "PNR", "time": "D_INDDTO", "date_format": "%d/%m/%Y",
             "code": "C_DIAG", "code_prefix": "ICD10", "strip_code_prefix": "D"},
        ]
    }  # fmt: skip
    root = import_table(folder, mapping, tmp_path / "out", ImportOptions(name="registry"))
    assert rows(root) == [
        (None, "SEX//F", None),
        (datetime(1960, 2, 3), "MEDS_BIRTH", None),
        (datetime(2020, 1, 2), "ICD10//I21", None),
    ]
    table = pq.read_table(root / "data")
    assert table.column("code").to_pylist()[0] == "SEX//F"  # static events sort first, as in MEDS


def test_a_bad_mapping_is_reported_whole(tmp_path):
    with pytest.raises(MedweaveError) as err:
        load_mapping(
            {"tables": [{"layout": "tall", "subject": "PNR"}, {"subject": "PNR", "code": "C", "valeu": "V"}]}
        )
    message = str(err.value)
    for part in (
        "tables[0].layout='tall': expected 'long' or 'wide'",
        "tables[1].valeu: unknown key; did you mean 'value'?",
        "tables[1]: a long table needs 'time'",
        "tables[0]: needs 'files'",
    ):
        assert part in message
    with pytest.raises(MedweaveError, match="shipped: .*lpr_diagnoses"):
        resolve_mapping("lpr_diagnosis")
