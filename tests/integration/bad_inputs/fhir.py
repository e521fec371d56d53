"""medweave-import format=fhir: broken FHIR as real exports come.

Each case writes a small input (a good Patient with a good Condition, then the broken part) under
work/in and imports it to work/out: strict stops naming the file, the line or entry and the field;
lenient skips the bad resource with a counted warning and imports the rest.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.integration.bad_inputs import Case

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-04-01"}


def condition(code="I21", system="http://hl7.org/fhir/sid/icd-10", subject="Patient/p1", **extra):
    return {
        "resourceType": "Condition",
        "subject": {"reference": subject},
        "code": {"coding": [{"system": system, "code": code}]},
        "onsetDateTime": "2020-01-02",
        **extra,
    }


def observation(**extra):
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "valueQuantity": {"value": 6.1, "unit": "%"},
        **extra,
    }


def note(data: str):
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "date": "2020-01-02T10:00:00+00:00",
        "content": [{"attachment": {"contentType": "text/plain", "data": data}}],
    }


def importing(files: dict[str, object]):
    """make(cohort, work): write ``files`` (name -> resources for NDJSON, a dict for JSON, or raw
    text) under work/in, and return run(lenient) that imports them into work/out."""

    def make(cohort: Path, work: Path):
        folder = work / "in"
        folder.mkdir()
        for name, content in files.items():
            if isinstance(content, list):
                text = "\n".join(c if isinstance(c, str) else json.dumps(c) for c in content) + "\n"
            else:
                text = content if isinstance(content, str) else json.dumps(content)
            (folder / name).write_text(text)

        def run(lenient: bool):
            from medweave.importers import ImportOptions
            from medweave.importers.fhir import import_fhir

            return import_fhir(folder, work / "out", ImportOptions(lenient=lenient))

        return run

    return make


def codes(expected: set[str]):
    """check_lenient: the cohort holds exactly these codes (the bad resource left out)."""

    def check(out: Path) -> None:
        found = set(pq.read_table(out / "data").column("code").to_pylist())
        assert found == expected, found
        summary = json.loads((out / "metadata/dataset.json").read_text())["medweave"]["import"]
        assert summary["skipped_bad_input"], summary

    return check


GOOD = {"SEX//F", "MEDS_BIRTH", "ICD10//I21"}


def good_then(*bad) -> dict[str, object]:
    return {"data.ndjson": [PATIENT, condition(), *bad]}


CASES = [
    Case(
        "ndjson-line-not-json",
        importing(good_then('{"resourceType": "Condition", "subject": ')),
        ("data.ndjson", "line 3", "expected one JSON resource per line"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "resource-fails-model-validation",
        importing(good_then({k: v for k, v in observation().items() if k != "status"})),
        ("data.ndjson", "line 3", "Observation.status", "fails FHIR R4 validation"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "reference-to-missing-patient",
        importing(good_then(condition("E11", subject="Patient/not-in-input"))),
        ("data.ndjson", "line 3", "Condition.subject", "refers to a Patient that is not in the input"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "subject-is-not-a-patient",
        importing(good_then(condition("E11", subject="Group/g1"))),
        ("line 3", "Condition.subject", "expected a reference to a Patient"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "observation-without-time",
        importing(good_then(observation())),
        ("data.ndjson", "line 3", "Observation.effective[x]", "an Observation needs a time"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "impossible-date",
        importing(good_then(condition("E11", onsetDateTime="2020-02-30"))),
        ("data.ndjson", "line 3", "Condition.onsetDateTime", "fails FHIR R4 validation", "day value"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "manifest-names-a-missing-file",
        importing(
            {
                "manifest.json": {
                    "transactionTime": "2024-01-01T00:00:00Z",
                    "request": "[base]/$export",
                    "output": [
                        {"type": "Patient", "url": "Patient.ndjson"},
                        {"type": "Condition", "url": "Condition.ndjson"},
                        {"type": "Observation", "url": "Observation.ndjson"},
                    ],
                },
                "Patient.ndjson": [PATIENT],
                "Condition.ndjson": [condition()],
            }
        ),
        ("manifest.json", "output[2].url", "Observation.ndjson", "does not exist"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "attachment-not-base64",
        importing(good_then(note("@@not base64!"))),
        ("line 3", "DocumentReference.content.0.attachment.data", "fails FHIR R4 validation", "Base64"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "attachment-not-utf8-text",
        importing(good_then(note(base64.b64encode(b"\xff\xfe\xfa clinic note").decode()))),
        (
            "line 3",
            "DocumentReference.content[0].attachment.data",
            "expected base64 of text/plain text in utf-8",
        ),
        check_lenient=codes(GOOD),
    ),
    Case(
        "bundle-entry-without-resource",
        importing(
            {
                "bundle.json": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [{"resource": PATIENT}, {"fullUrl": "urn:uuid:x"}, {"resource": condition()}],
                }
            }
        ),
        ("bundle.json", "entry 1", "expected entry.resource"),
        check_lenient=codes(GOOD),
    ),
    Case(
        "truncated-bundle-file",
        importing(
            {
                "a.json": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": PATIENT}]},
                "b.json": json.dumps({"resourceType": "Bundle", "entry": [{"resource": condition()}]})[:40],
            }
        ),
        ("b.json", "file", "expected a FHIR Bundle or resource as JSON"),
        check_lenient=codes({"SEX//F", "MEDS_BIRTH"}),
    ),
    Case(
        "patient-listed-twice",
        importing(good_then(PATIENT)),
        ("line 3", "Patient.id", "expected each Patient once"),
        check_lenient=codes(GOOD),
    ),
]
