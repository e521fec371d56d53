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


def test_local_code_systems_are_kept_under_a_derived_or_configured_prefix(tmp_path, caplog):
    import logging

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
    with caplog.at_level(logging.INFO):
        root = import_fhir(folder, tmp_path / "derived")  # strict: local systems are valid FHIR
    printed = [r.getMessage() for r in caplog.records]
    assert any(
        "NURSING-SCORES" in line and "http://clinosim.dev/fhir/CodeSystem/nursing-scores" in line
        for line in printed
    )  # the table of code systems, printed at the end
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


# -- exports as third-party systems write them ---------------------------------------------------
def _ndjson(path, resources):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


def _summary(root):
    return json.loads((root / "metadata/dataset.json").read_text())["medweave"]["import"]


CONDITION = {"resourceType": "Condition", "subject": ref(), "code": coded(SNOMED, "44054006"),
             "recordedDate": "2021-03-04"}  # fmt: skip


def test_a_bulk_export_manifest_is_followed_and_metadata_is_counted(tmp_path):
    export = tmp_path / "export"
    _ndjson(export / "Patient.ndjson", [PATIENT])
    _ndjson(export / "out" / "1", [CONDITION])  # Bulk Data servers name files as they like
    elsewhere = _ndjson(tmp_path / "elsewhere" / "Observation.ndjson", [RESOURCES[2]])
    manifest = {
        "transactionTime": "2024-05-01T00:00:00Z",
        "request": "https://ehr.example.org/fhir/$export",
        "requiresAccessToken": False,
        "output": [
            {"type": "Patient", "url": "Patient.ndjson"},
            {"type": "Condition", "url": "out/1"},
            {"type": "Observation", "url": elsewhere.as_uri()},
        ],
        "error": [{"type": "OperationOutcome", "url": "errors.ndjson"}],
    }
    (export / "manifest.json").write_text(json.dumps(manifest))
    (export / "_generator_metadata.json").write_text(json.dumps({"generator": "x", "seed": 1}))
    (export / "empty-list.json").write_text("[]")  # JSON, not a resource: counted too
    root = import_fhir(export, tmp_path / "cohort")  # strict
    codes = {e[1] for e in events(root)}
    assert {"SEX//M", "SNOMED//44054006", "LOINC//72166-2"} <= codes
    summary = _summary(root)
    assert summary["files"] == 5  # the three outputs and two other JSON files (read, then counted)
    assert summary["resources"] == {"Condition": 1, "Observation": 1, "Patient": 1}
    assert summary["manifests"] == [{"transactionTime": "2024-05-01T00:00:00Z", "outputs": 3}]
    assert summary["skipped_files"] == {
        "JSON that is not a FHIR resource (no resourceType)": 2,
        "manifest error files (not resources to import)": 1,
    }
    # the manifest itself given as input: the same export
    again = import_fhir(export / "manifest.json", tmp_path / "again")
    assert events(again) == events(root)

    manifest["output"].append({"type": "Encounter", "url": "https://ehr.example.org/files/9.ndjson"})
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MedweaveError, match=r"manifest.json: output\[3\].url: a remote URL .*download"):
        import_fhir(export, tmp_path / "remote")


def test_a_json_array_of_resources_is_read(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "dump.json").write_text(json.dumps([PATIENT, CONDITION]))
    assert "SNOMED//44054006" in {e[1] for e in events(import_fhir(folder, tmp_path / "out"))}


def test_text_only_concepts_keep_their_events_under_text_codes(tmp_path, caplog):
    import logging

    saline = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": ref(),
        "medicationCodeableConcept": {"text": "IV  Normal-Saline 0.9%"},
        "authoredOn": "2020-01-04",
    }
    note = {
        "resourceType": "Condition",
        "subject": ref(),
        "code": {"text": "Sore knee after the marathon"},
        "recordedDate": "2020-01-05",
    }
    empty = {"resourceType": "Condition", "subject": ref(), "code": {"coding": [{"system": SNOMED}]},
             "recordedDate": "2020-01-06"}  # fmt: skip
    folder = tmp_path / "in"
    _ndjson(folder / "all.ndjson", [PATIENT, saline, note, empty])
    with caplog.at_level(logging.INFO):
        root = import_fhir(folder, tmp_path / "out")  # strict: free text is valid FHIR
    codes = [e[1] for e in events(root)]
    assert "TEXT//iv_normal_saline_0_9" in codes and "TEXT//sore_knee_after_the_marathon" in codes
    summary = _summary(root)
    assert summary["text_only_codes"] == {
        "Condition.code": 1,
        "MedicationRequest.medicationCodeableConcept": 1,
    }
    assert summary["not_imported"] == {"Condition": {"Condition.code has no coding and no text": 1}}
    logged = " ".join(r.getMessage() for r in caplog.records).lower()
    assert "saline" not in logged and "marathon" not in logged and "coded from text" in logged

    mapping = FhirMapping(text_codes={"IV normal saline 0.9 %": "RXNORM//313002"})
    mapped = [e[1] for e in events(import_fhir(folder, tmp_path / "mapped", mapping=mapping))]
    assert "RXNORM//313002" in mapped and "TEXT//iv_normal_saline_0_9" not in mapped


def test_long_free_text_makes_a_bounded_code():
    from medweave.importers.fhir import normalise_text

    long = "Patient reports " + "intermittent " * 20 + "pain"
    code = normalise_text(long)
    assert len(code) == 64 and code != normalise_text(long + " today")
    assert normalise_text("Ärger  —  ÖL") == "ärger_öl"


def test_empty_strings_and_unknown_elements_are_read_as_absent_and_counted(tmp_path):
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "subject": ref(),
        "code": {"coding": [{"system": LOINC, "code": "", "display": ""}], "text": ""},
        "category": [{"coding": [{"system": SNOMED, "code": "394914008", "display": "Radiology"}]}],
        "effectiveDateTime": "2020-01-02T10:00:00Z",
        "conclusion": "No acute findings.",
    }
    given = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "subject": ref(),
        "medicationCodeableConcept": coded(ATC, "N02BE01"),
        "effectiveDateTime": "2020-01-02T11:00:00Z",
        "dosage": {"dose": {"value": 500, "unit": "mg"}, "timing": {"repeat": {"frequency": 4}}},
    }
    broken = {**CONDITION, "onsetDateTime": "2020-02-30"}  # fmt: skip
    folder = tmp_path / "in"
    _ndjson(folder / "all.ndjson", [PATIENT, report, given])
    root = import_fhir(folder, tmp_path / "out")
    got = {e[1]: e for e in events(root)}
    assert got["REPORT//SNOMED//394914008"][0] == datetime(2020, 1, 2, 10)  # the category named it
    assert got["NOTE//394914008"][3] == "No acute findings."
    assert got["ATC//N02BE01"][2] == 500.0
    assert _summary(root)["elements_dropped"] == {
        "DiagnosticReport: empty string": 3,
        "MedicationAdministration.dosage.timing: not an R4 element": 1,
    }
    _ndjson(folder / "broken.ndjson", [broken])  # an impossible date is still corrupt input
    with pytest.raises(MedweaveError, match=r"broken.ndjson: line 1, field Condition.onsetDateTime"):
        import_fhir(folder, tmp_path / "strict")


NEW_TYPES = [
    {"resourceType": "Immunization", "status": "completed", "patient": ref(),
     "vaccineCode": coded("http://hl7.org/fhir/sid/cvx", "150"), "occurrenceDateTime": "2021-01-01"},
    {"resourceType": "Immunization", "status": "not-done", "patient": ref(),
     "vaccineCode": coded("http://hl7.org/fhir/sid/cvx", "208"), "occurrenceDateTime": "2021-01-02"},
    {"resourceType": "MedicationDispense", "status": "completed", "subject": ref(),
     "medicationCodeableConcept": coded(ATC, "C07AB02"), "whenHandedOver": "2021-01-03T09:00:00Z",
     "quantity": {"value": 30, "unit": "tablet"}},
    {"resourceType": "AllergyIntolerance", "patient": ref(), "code": coded(SNOMED, "764146007", "Penicillin"),
     "onsetDateTime": "2010-01-01", "recordedDate": "2021-01-04"},
    {"resourceType": "AllergyIntolerance", "patient": ref(), "code": coded(SNOMED, "1"),
     "recordedDate": "2021-01-04", "verificationStatus": coded(
         "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "refuted")},
    {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": ref(),
     "code": coded(LOINC, "4548-4"), "authoredOn": "2021-01-05"},
    {"resourceType": "Specimen", "subject": ref(), "type": coded(SNOMED, "119297000"),
     "collection": {"collectedDateTime": "2021-01-06T08:00:00Z"}},
    {"resourceType": "FamilyMemberHistory", "status": "completed", "patient": ref(),
     "relationship": coded("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH"),
     "condition": [{"code": coded(SNOMED, "254837009")}]},
    {"resourceType": "FamilyMemberHistory", "status": "completed", "patient": ref(), "date": "2021-01-07",
     "relationship": coded("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "FTH"),
     "deceasedBoolean": True},
    {"resourceType": "ImagingStudy", "status": "available", "subject": ref(),
     "started": "2021-01-08T10:00:00Z",
     "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:2.25.1234"}],
     "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]},
    {"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": ref(),
     "period": {"start": "2021-01-09"},
     "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                               "code": "assess-plan"}]}, coded(SNOMED, "698360004")],
     "activity": [{"detail": {"status": "in-progress", "code": coded(SNOMED, "229065009")}}]},
    {"resourceType": "Goal", "lifecycleStatus": "active", "subject": ref(), "startDate": "2021-01-10",
     "description": {"text": "HbA1c below 7 %"}},
    {"resourceType": "DeviceUseStatement", "status": "active", "subject": ref(),
     "device": ref("Device", "d1"), "timingPeriod": {"start": "2021-01-11"}},
    {"resourceType": "Device", "id": "d1", "type": coded(SNOMED, "23973005")},
    {"resourceType": "ClinicalImpression", "status": "completed", "subject": ref(),
     "effectiveDateTime": "2021-01-12T00:00:00Z", "code": coded(LOINC, "11506-3"),
     "description": "Stable.", "summary": "Improving."},
]  # fmt: skip


def test_every_clinical_type_becomes_events_with_qualified_codes(tmp_path):
    folder = tmp_path / "in"
    _ndjson(folder / "all.ndjson", [PATIENT, *NEW_TYPES])
    root = import_fhir(folder, tmp_path / "out")
    d = datetime
    assert [e for e in events(root) if e[1] not in ("SEX//M", "MEDS_BIRTH", "MEDS_DEATH")] == [
        (None, "FAMILY_HISTORY//SNOMED//254837009", None, None),  # no date: static
        (d(2021, 1, 1), "CVX//150", None, None),
        (d(2021, 1, 2), "NOT_DONE//CVX//208", None, None),
        (d(2021, 1, 3, 9), "ATC//C07AB02", 30.0, None),
        (d(2021, 1, 4), "ALLERGY//SNOMED//764146007", None, None),  # known from its recording
        (d(2021, 1, 5), "ORDER//LOINC//4548-4", None, None),
        (d(2021, 1, 6, 8), "SPECIMEN//SNOMED//119297000", None, None),
        (d(2021, 1, 7), "FAMILY_HISTORY//V3-ROLECODE//FTH//deceased", None, None),
        (d(2021, 1, 8, 10), "IMAGING//CT", None, "2.25.1234"),
        (d(2021, 1, 9), "CAREPLAN//SNOMED//698360004", None, None),
        (d(2021, 1, 9), "CAREPLAN//SNOMED//229065009", None, None),
        (d(2021, 1, 10), "GOAL//TEXT//hba1c_below_7", None, None),
        (d(2021, 1, 11), "DEVICE//SNOMED//23973005", None, None),
        (d(2021, 1, 12), "NOTE//11506-3", None, "Stable.\nImproving."),
    ]
    summary = _summary(root)
    assert summary["not_imported"] == {"AllergyIntolerance": {"verificationStatus refuted": 1}}
    assert summary["imported"]["Device"] == 1 and summary["imported"]["FamilyMemberHistory"] == 2


def test_a_note_in_a_report_and_a_document_is_written_once(tmp_path):
    text = "Chest clear."
    data = base64.b64encode(text.encode()).decode()
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "subject": ref(),
        "code": coded(LOINC, "34117-2"),
        "effectiveDateTime": "2020-01-02T10:00:00Z",
        "presentedForm": [{"contentType": "text/plain", "data": data}],
    }
    document = {"resourceType": "DocumentReference", "status": "current", "subject": ref(),
                "type": coded(LOINC, "34117-2"), "date": "2020-01-02T10:00:00Z",
                "content": [{"attachment": {"contentType": "text/plain", "data": data}}]}  # fmt: skip
    folder = tmp_path / "in"
    _ndjson(folder / "all.ndjson", [PATIENT, report, document])
    root = import_fhir(folder, tmp_path / "out")
    notes = [e for e in events(root) if e[1].startswith("NOTE//")]
    assert notes == [(datetime(2020, 1, 2, 10), "NOTE//34117-2", None, text)]
    summary = _summary(root)
    assert summary["duplicate_notes"] == 1 and summary["imported"]["DocumentReference"] == 1
