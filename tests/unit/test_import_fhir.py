"""FHIR R4 -> MEDS events: what each resource type becomes, references, IDs, splits, options."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from medweave.errors import MedweaveError
from medweave.importers import ImportOptions
from medweave.importers.fhir import FhirMapping, import_fhir

LOINC, SNOMED = "http://loinc.org", "http://snomed.info/sct"
ATC = "http://www.whocc.no/atc"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DIV = '<div xmlns="http://www.w3.org/1999/xhtml">Chest pain.</div>'
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "gender": "male",
    "birthDate": "1950-06-15",
    "deceasedDateTime": "2024-03-01T12:00:00+01:00",
}


def ref(kind="Patient", id_="p1"):
    return {"reference": f"{kind}/{id_}"}


def coded(system, code, display=None):
    return {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]}


RESOURCES = [
    {"resourceType": "Condition", "subject": ref(), 
     "code": coded(SNOMED, "22298006", "Myocardial infarction"),
     "onsetPeriod": {"start": "2020-01-02T08:00:00+00:00"}},
    {"resourceType": "Observation", "status": "final", "subject": ref(),
     "code": coded(LOINC, "85354-9", "BP"),
     "effectiveDateTime": "2020-01-02T09:00:00Z",
     "component": [
         {"code": coded(LOINC, "8480-6", "Systolic"), "valueQuantity": {"value": 142, "unit": "mm[Hg]"}},
         {"code": coded(LOINC, "8462-4", "Diastolic"), "valueQuantity": {"value": 91, "unit": "mm[Hg]"}},
     ]},
    {"resourceType": "Observation", "status": "final", "subject": ref(), "code": coded(LOINC, "72166-2"),
     "issued": "2020-01-03T00:00:00Z", "valueCodeableConcept": coded(SNOMED, "8517006", "Ex-smoker")},
    {"resourceType": "Observation", "status": "entered-in-error", "subject": ref(), "code": coded(LOINC, "1"),
     "effectiveDateTime": "2020-01-02"},
    {"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": ref(),
     "medicationReference": ref("Medication", "m1"), "authoredOn": "2020-01-04"},
    {"resourceType": "MedicationStatement", "status": "active", "subject": ref(),
     "medicationCodeableConcept": coded(ATC, "C07AB02"), "effectiveDateTime": "2020-02"},
    {"resourceType": "Procedure", "status": "completed", "subject": ref(), "code": coded(SNOMED, "232717009"),
     "performedDateTime": "2020-01-05T10:00:00+00:00"},
    {"resourceType": "Encounter", "status": "finished", "subject": ref(),
     "class": {"system": ACT, "code": "IMP", "display": "inpatient"},
     "period": {"start": "2020-01-02T07:00:00+00:00"}},
    {"resourceType": "DocumentReference", "status": "current", "subject": ref(),
     "type": coded(LOINC, "18842-5"),
     "date": "2020-01-06T00:00:00+00:00",
     "content": [{"attachment": {"contentType": "text/html",
                                 "data": base64.b64encode(b"<p>Discharged <b>home</b>.</p>").decode()}},
                 {"attachment": {"contentType": "application/pdf", "data": "JVBERi0="}}]},
    {"resourceType": "Composition", "status": "final", "subject": ref(), "type": coded(LOINC, "11488-4"),
     "date": "2020-01-07T00:00:00+00:00", "title": "Consult", "author": [ref("Practitioner", "d1")],
     "section": [{"title": "Findings", "text": {"status": "generated", "div": DIV}}]},
    {"resourceType": "Practitioner", "id": "d1"},
]  # fmt: skip


def write_inputs(folder, patient_full_url="http://example.org/fhir/Patient/p1"):
    """A Bundle with the Patient (absolute fullUrl) and the events; a Medication as NDJSON."""
    folder.mkdir(parents=True, exist_ok=True)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": patient_full_url, "resource": PATIENT}] + [{"resource": r} for r in RESOURCES],
    }
    (folder / "bundle.json").write_text(json.dumps(bundle))
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": coded("http://www.whocc.no/atc", "B01AC06"),
    }
    (folder / "Medication.ndjson").write_text(json.dumps(medication) + "\n")
    return folder


def events(root):
    table = pq.read_table(root / "data").to_pandas()
    return [
        (None if t != t else t.to_pydatetime(), code, None if v != v else float(v), None if x != x else x)
        for t, code, v, x in zip(table.time, table.code, table.numeric_value, table.text_value, strict=True)
    ]


def test_each_resource_type_becomes_meds_events(tmp_path):
    root = import_fhir(write_inputs(tmp_path / "in"), tmp_path / "out")
    d = datetime
    assert events(root) == [
        (None, "SEX//M", None, None),
        (d(1950, 6, 15), "MEDS_BIRTH", None, None),
        (d(2020, 1, 2, 7), "ENCOUNTER//IMP", None, None),
        (d(2020, 1, 2, 8), "SNOMED//22298006", None, None),
        (d(2020, 1, 2, 9), "LOINC//8480-6", 142.0, None),
        (d(2020, 1, 2, 9), "LOINC//8462-4", 91.0, None),
        (d(2020, 1, 3), "LOINC//72166-2", None, "SNOMED//8517006"),
        (d(2020, 1, 4), "ATC//B01AC06", None, None),
        (d(2020, 1, 5, 10), "SNOMED//232717009", None, None),
        (d(2020, 1, 6), "NOTE//18842-5", None, "Discharged home ."),
        (d(2020, 1, 7), "NOTE//11488-4", None, "Consult\nFindings\nChest pain."),
        (d(2020, 2, 1), "ATC//C07AB02", None, None),
        (d(2024, 3, 1, 11), "MEDS_DEATH", None, None),  # +01:00 -> UTC
    ]
    meta = json.loads((root / "metadata/dataset.json").read_text())
    summary = meta["medweave"]["import"]
    assert summary["resources"]["Observation"] == 3 and summary["subjects"] == 1
    assert summary["not_imported"] == {
        "Observation": {"status entered-in-error": 1},
        "Practitioner": {"resource type not mapped to events": 1},
    }
    assert meta["medweave"]["modalities"] == ["ehr_codes", "text"]
    assert meta["code_modifier_columns"] == ["unit"]
    units = pq.read_table(root / "data").column("unit").to_pylist()
    assert units.count("mm[Hg]") == 2
    described = {
        r["code"]: r["description"] for r in pq.read_table(root / "metadata/codes.parquet").to_pylist()
    }
    assert described["SNOMED//22298006"] == "Myocardial infarction"
    assert described["ENCOUNTER//IMP"] == "inpatient"


def test_a_back_dated_condition_counts_from_when_it_was_recorded(tmp_path):
    """onset 2019 but recorded 2021: before 2021 nobody knew, so the event must not be earlier."""
    condition = {
        "resourceType": "Condition",
        "subject": ref(),
        "code": coded(SNOMED, "44054006"),
        "onsetDateTime": "2019-05-01",
        "recordedDate": "2021-03-04",
    }
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "all.ndjson").write_text(json.dumps(PATIENT) + "\n" + json.dumps(condition) + "\n")
    root = import_fhir(folder, tmp_path / "out")
    assert (datetime(2021, 3, 4), "SNOMED//44054006", None, None) in events(root)


def test_subject_ids_are_deterministic_and_their_map_stays_outside(tmp_path):
    a = import_fhir(write_inputs(tmp_path / "in"), tmp_path / "a")
    b = import_fhir(write_inputs(tmp_path / "in2", "urn:uuid:1234"), tmp_path / "b")
    ids_a = pq.read_table(a / "data").column("subject_id").to_pylist()
    assert set(ids_a) == set(
        pq.read_table(b / "data").column("subject_id").to_pylist()
    )  # keyed by Patient.id
    mapping = pq.read_table(tmp_path / "a.subject_map.parquet").to_pylist()
    assert mapping == [{"subject_id": ids_a[0], "source_id": "Patient/p1"}]
    for path in a.rglob("*"):  # the source ID is nowhere in the cohort
        assert not path.is_file() or b"Patient/p1" not in path.read_bytes(), path
    with pytest.raises(MedweaveError, match="must stay outside the cohort"):
        import_fhir(
            tmp_path / "in", tmp_path / "c", ImportOptions(subject_map=str(tmp_path / "c" / "map.parquet"))
        )
    with pytest.raises(MedweaveError, match="overwrite=true"):
        import_fhir(tmp_path / "in", tmp_path / "a")
    salted = import_fhir(tmp_path / "in", tmp_path / "d", ImportOptions(id_salt="site-secret"))
    assert set(pq.read_table(salted / "data").column("subject_id").to_pylist()).isdisjoint(ids_a)


def test_local_code_systems_are_kept_under_a_derived_or_configured_prefix(tmp_path):
    folder = write_inputs(tmp_path / "in")
    extra = [
        {"resourceType": "Condition", "subject": ref(), "code": coded("urn:oid:1.2.208.176.2.4", "DI219"),
         "recordedDate": "2021-01-01"},
        {"resourceType": "Observation", "status": "final", "subject": ref(), "issued": "2021-01-02T00:00:00Z",
         "code": coded("http://clinosim.dev/fhir/CodeSystem/nursing-scores", "braden"),
         "valueInteger": 18},
        {"resourceType": "Observation", "status": "final", "subject": ref(), "issued": "2021-01-03T00:00:00Z",
         "code": {"coding": [{"system": "http://example.org/x/CodeSystem/nursing-scores", "code": "morse"},
                             {"system": LOINC, "code": "59460-6"}]}, "valueInteger": 25},
    ]  # fmt: skip
    (folder / "extra.ndjson").write_text("\n".join(json.dumps(e) for e in extra) + "\n")
    root = import_fhir(folder, tmp_path / "derived")  # strict: local systems are valid FHIR
    codes = {e[1] for e in events(root)}
    assert {"OID_1.2.208.176.2.4//DI219", "NURSING-SCORES//braden", "LOINC//59460-6"} <= codes  # LOINC first
    summary = json.loads((root / "metadata/dataset.json").read_text())["medweave"]["import"]
    systems = {row["system"]: row for row in summary["code_systems"]}
    assert systems["urn:oid:1.2.208.176.2.4"] == {
        "system": "urn:oid:1.2.208.176.2.4", "prefix": "OID_1.2.208.176.2.4", "codes": 1, "configured": False
    }  # fmt: skip
    assert systems[LOINC]["configured"] and systems[LOINC]["codes"] >= 4
    assert "http://example.org/x/CodeSystem/nursing-scores" not in systems  # LOINC was chosen there

    mapping = FhirMapping(code_systems={"urn:oid:1.2.208.176.2.4": "SKS"}, unit_in_code=True)
    codes = {e[1] for e in events(import_fhir(folder, tmp_path / "out", mapping=mapping))}
    assert {"SKS//DI219", "LOINC//8480-6//mm[Hg]"} <= codes


@pytest.mark.parametrize(
    ("system", "prefix"),
    [
        ("http://clinosim.dev/fhir/CodeSystem/nursing-scores", "NURSING-SCORES"),
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "V3-ACTCODE"),
        ("https://hospital.example.org/", "HOSPITAL.EXAMPLE.ORG"),
        ("urn:oid:1.2.392.200119.4.504", "OID_1.2.392.200119.4.504"),
        ("urn:uuid:0d3c9a1e-7f1b-4c1e-9f5e-3b1f8f1b2c3d", "UUID_0d3c9a1e"),
        ("urn:ietf:bcp:47", "47"),
    ],
)
def test_derived_prefixes(system, prefix):
    from medweave.importers.fhir.codes import derive_prefix

    assert derive_prefix(system) == prefix


def test_two_local_systems_with_one_name_get_two_prefixes():
    from types import SimpleNamespace as NS

    from medweave.importers.fhir.codes import Coder

    coder = Coder(FhirMapping())
    a = coder.coding(NS(system="http://a.example/CodeSystem/scores", code="1", display=None))[0]
    b = coder.coding(NS(system="http://b.example/CodeSystem/scores", code="1", display=None))[0]
    icd = coder.coding(NS(system="http://example.org/CodeSystem/icd10", code="1", display=None))[0]
    assert a == "SCORES//1" and b.startswith("SCORES_") and b != a and icd == "ICD10_" + icd[6:]
    assert coder.coding(NS(system=None, code="x1", display=None))[0] == "LOCAL//x1"


def test_splits_follow_the_fractions_and_the_subject_not_the_order():
    from medweave.importers.cohort_writer import split_of

    ids = np.arange(20_000, dtype=np.int64) * 7919
    fractions = {"train": 0.6, "tuning": 0.2, "held_out": 0.2}
    splits = split_of(ids, fractions, "salt")
    for name, share in fractions.items():
        assert abs((splits == name).mean() - share) < 0.02
    assert (split_of(ids[::-1], fractions, "salt") == splits[::-1]).all()
    assert (split_of(ids, fractions, "other") != splits).any()


def test_the_cli_module_imports_no_heavy_libraries():
    heavy = "{'fhir', 'pyarrow', 'torch'}"
    code = f"import sys, medweave.cli.import_cohort; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_small_buffers_shard_by_subject_and_change_nothing_else(tmp_path):
    """Memory is bounded by buffer_rows and rows_per_shard; the events are the same either way,
    each subject sits in one shard, and each shard is sorted by subject then time (static first)."""
    lines = []
    for p in range(30):
        lines.append(
            {"resourceType": "Patient", "id": f"p{p}", "gender": "female", "birthDate": "1970-01-01"}
        )
        for k in range(5):
            when = f"20{10 + (k * 7 + p) % 13}-01-01"
            code = coded(SNOMED, str(100 + k))
            lines.append(
                {"resourceType": "Condition", "subject": ref(id_=f"p{p}"), "code": code, "recordedDate": when}
            )
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "all.ndjson").write_text("\n".join(json.dumps(line) for line in lines[::-1]) + "\n")
    small = ImportOptions(buffer_rows=7, buckets=3, rows_per_shard=40)
    sharded = import_fhir(folder, tmp_path / "small", small)
    whole = import_fhir(folder, tmp_path / "whole")
    shards = sorted((sharded / "data").glob("*.parquet"))
    assert len(shards) > 1 and len(list((whole / "data").glob("*.parquet"))) == 1
    seen = set()
    for shard in shards:
        table = pq.read_table(shard).to_pandas()
        ids = set(table.subject_id)
        assert not ids & seen
        seen |= ids
        timed = table.time.notna()
        key = list(zip(table.subject_id, timed, table.time.fillna(pd.Timestamp(0)), strict=True))
        assert key == sorted(key)
    assert len(seen) == 30
    assert sorted(events(sharded), key=str) == sorted(events(whole), key=str)
