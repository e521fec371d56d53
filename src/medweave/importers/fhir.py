"""FHIR R4 JSON -> MEDS events, through the fhir.resources models (their R4B package).

Why R4B: fhir.resources 8.x ships R5 (default), R4B and STU3 models on pydantic 2; R4 proper is
only in the 6.x line, which needs pydantic 1 and would clash with the rest of medweave. R4B is
R4 with a few non-clinical resources revised (subscriptions, evidence, medication knowledge):
Patient, Condition, Observation, MedicationRequest/Statement, Procedure, Encounter,
DocumentReference and Composition validate R4 JSON (Synthea's included) unchanged.

Inputs are Bundle files (``*.json``: a Bundle or one resource per file), NDJSON bulk exports
(``*.ndjson``, one resource per line) and gzipped versions of either. They are read twice, one
file and one line or bundle at a time: the first pass indexes Patients (and Medications, for
``medicationReference``), the second maps every other resource, so a reference may point to a
resource in any file, and memory holds the patient index, never the events.

What becomes which event (code system URLs become prefixes through ``CODE_SYSTEMS``):

    Patient              SEX//F | SEX//M | SEX//O (no time), MEDS_BIRTH at birthDate,
                         MEDS_DEATH at deceasedDateTime
    Condition            ICD10//I21.9, SNOMED//..., at onset[x] or recordedDate
    Observation          LOINC//..., numeric_value (+ unit) or text_value, at effective[x] or issued;
                         each component is an event of its own
    MedicationRequest    RXNORM//..., ATC//..., at authoredOn
    MedicationStatement  the same, at effective[x] or dateAsserted
    Procedure            SNOMED//..., CPT//..., at performed[x]
    Encounter            ENCOUNTER//<class code> (AMB, IMP, EMER), at period.start
    DocumentReference    NOTE//<type code>, the decoded text attachment in text_value, at date
    Composition          NOTE//<type code>, its sections' narrative as text, at date
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

from medweave.data import contract as c
from medweave.errors import MedweaveError
from medweave.importers.cohort_writer import CohortWriter, ImportOptions, Skipped

log = logging.getLogger(__name__)

# Code system URL -> MEDS code prefix. Extend through fhir.code_systems in configs/import.yaml.
CODE_SYSTEMS = {
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "http://www.whocc.no/atc": "ATC",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "urn:oid:1.2.208.176.2.1": "NPU",  # Danish/Swedish laboratory terminology (IUPAC NPU)
}
SEX_CODES = {"female": "SEX//F", "male": "SEX//M", "other": "SEX//O"}  # as the sandbox writes them
INDEXED = ("Patient", "Medication")  # read in the first pass
MAPPED = {  # resource type -> the method that maps it
    "Condition": "_condition",
    "Observation": "_observation",
    "MedicationRequest": "_medication_request",
    "MedicationStatement": "_medication_statement",
    "Procedure": "_procedure",
    "Encounter": "_encounter",
    "DocumentReference": "_document_reference",
    "Composition": "_composition",
}
SUFFIXES = (".json", ".ndjson", ".json.gz", ".ndjson.gz")


@dataclass
class FhirMapping:
    """How FHIR codes become MEDS codes.

    Args:
        code_systems: code system URL -> prefix, added to (or overriding) ``CODE_SYSTEMS``.
        unit_in_code: also put an Observation's unit into its code ("LOINC//2345-7//mg/dL"), so
            values in different units never share a code; the unit column is written either way.
    """

    code_systems: dict = field(default_factory=dict)
    unit_in_code: bool = False

    def systems(self) -> dict[str, str]:
        return {**CODE_SYSTEMS, **dict(self.code_systems)}


class _Fault(Exception):
    """A resource that cannot be mapped: ``field`` and what was ``expected`` there."""

    def __init__(self, field: str, expected: str):
        super().__init__(f"field {field}: {expected}")
        self.field, self.expected = field, expected


class _Ignore(Exception):
    """A resource left out on purpose (entered in error, a PDF attachment): counted, no warning."""


def fhir_files(inputs) -> list[Path]:
    """Every FHIR file named by ``inputs`` (files or folders, searched recursively), sorted."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise MedweaveError(f"input {path} does not exist; expected FHIR JSON/NDJSON files or a folder")
    if not files:
        raise MedweaveError(f"input {inputs}: no FHIR files found; expected files ending in {list(SUFFIXES)}")
    return files


def import_fhir(
    inputs, out: str | Path, options: ImportOptions | None = None, mapping: FhirMapping | None = None
) -> Path:
    """Import FHIR files into a cohort at ``out`` and return it (see the module docstring)."""
    options = options or ImportOptions()
    files = fhir_files(inputs)
    skipped = Skipped(options.lenient)
    with CohortWriter(out, options, "fhir") as writer:
        importer = _FhirImporter(writer, skipped, mapping or FhirMapping())
        importer.index(files)
        importer.map(files)
        summary = {
            "format": "fhir",
            "fhir_version": "R4 (fhir.resources R4B models)",
            "files": len(files),
            "resources": dict(sorted(importer.resources.items())),
            **skipped.as_dict(),
        }
        root = writer.finish(summary)
    log_summary(root, json.loads((root / c.DATASET_METADATA).read_text())["medweave"]["import"])
    return root


def log_summary(root: Path, summary: dict) -> None:
    log.info("Imported %s subjects, %s events into %s", summary["subjects"], summary["events"], root)
    for kind, reasons in summary.get("skipped_bad_input", {}).items():
        for reason, n in reasons.items():
            log.warning("skipped %d %s: %s", n, kind, reason)
    for kind, reasons in summary.get("not_imported", {}).items():
        for reason, n in reasons.items():
            log.info("not imported: %d %s (%s)", n, kind, reason)


class _FhirImporter:
    def __init__(self, writer: CohortWriter, skipped: Skipped, mapping: FhirMapping):
        self.writer, self.skipped, self.mapping = writer, skipped, mapping
        self.systems = mapping.systems()
        self.patients: dict[str, int] = {}  # reference forms ("Patient/x", fullUrl) -> subject_id
        self.medications: dict[str, tuple[str, str | None]] = {}  # reference -> (code, display)
        self.resources: Counter[str] = Counter()
        self.rows: list[tuple] = []

    # -- reading --------------------------------------------------------------------------
    def _read(self, path: Path, report: bool) -> Iterator[tuple[str, dict, str | None]]:
        """(where, resource JSON, fullUrl) for each resource in a file; faults reported once."""
        opener = gzip.open if path.name.endswith(".gz") else open
        if path.name.removesuffix(".gz").endswith(".ndjson"):
            with opener(path, "rt", encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        if report:
                            self.skipped.fault(
                                "NDJSON line",
                                path,
                                f"line {i}",
                                "expected one JSON resource per line (NDJSON)",
                            )
                        continue
                    yield from self._expand(path, obj, f"line {i}", None, report)
            return
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                obj = json.load(f)
        except (ValueError, UnicodeDecodeError, OSError, EOFError):
            if report:
                self.skipped.fault("file", path, "file", "expected a FHIR Bundle or resource as JSON")
            return
        yield from self._expand(path, obj, "resource", None, report)

    def _expand(self, path, obj, where, full_url, report):
        if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
            if report:
                self.skipped.fault("unknown", path, where, "expected a JSON object with a resourceType")
            return
        if obj["resourceType"] != "Bundle":
            yield where, obj, full_url
            return
        base = "" if where == "resource" else f"{where}, "
        for j, entry in enumerate(obj.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is None:
                if report:
                    self.skipped.fault("Bundle entry", path, f"{base}entry {j}", "expected entry.resource")
                continue
            yield from self._expand(path, resource, f"{base}entry {j}", entry.get("fullUrl"), report)

    def _model(self, path, where, obj):
        """The validated fhir.resources model, or a fault naming the first invalid field."""
        from fhir.resources.R4B import get_fhir_model_class
        from pydantic import ValidationError

        kind = obj["resourceType"]
        try:
            return get_fhir_model_class(kind).model_validate(obj)
        except ValidationError as err:
            first = err.errors()[0]  # its message and place only: the input may hold identifiers
            place = ".".join(str(p) for p in first["loc"]) or "resource"
            self.skipped.fault(
                kind, path, f"{where}, field {kind}.{place}", f"fails FHIR R4 validation: {first['msg']}"
            )
        except (KeyError, ValueError) as err:  # not a resource type the models know
            self.skipped.fault(kind, path, where, f"expected a FHIR R4 resource type ({err})")
        return None

    # -- pass 1: Patients and Medications ---------------------------------------------------
    def index(self, files: list[Path]) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(desc="FHIR pass 1/2 (patients)", unit=" resources", leave=False)
        for path in files:
            for where, obj, full_url in self._read(path, report=True):
                bar.update()
                kind = obj["resourceType"]
                self.resources[kind] += 1
                if kind not in INDEXED:
                    continue
                model = self._model(path, where, obj)
                if model is None:
                    continue
                refs = [f"{kind}/{model.id}"] if model.id else []
                refs += [full_url] if full_url else []
                if not refs:
                    self.skipped.fault(
                        kind, path, f"{where}, field {kind}.id", "expected an id or a Bundle entry fullUrl"
                    )
                    continue
                if kind == "Medication":
                    try:
                        code = self._code(model.code, "Medication.code")
                    except _Fault as fault:
                        self.skipped.fault(kind, path, f"{where}, field {fault.field}", fault.expected)
                        continue
                    self.medications.update(dict.fromkeys(refs, code))
                    continue
                if any(ref in self.patients for ref in refs):
                    self.skipped.fault(
                        kind, path, f"{where}, field Patient.id", "expected each Patient once (read before)"
                    )
                    continue
                sid = self.writer.subject_id(refs[0])
                self.patients.update(dict.fromkeys(refs, sid))
                self._patient_events(sid, model)
        bar.close()
        self._flush()

    def _patient_events(self, sid: int, patient) -> None:
        if patient.gender in SEX_CODES:
            self._emit(sid, None, SEX_CODES[patient.gender], f"Sex: {patient.gender}")
        if patient.birthDate is not None:
            self._emit(sid, _when(patient.birthDate), c.BIRTH_CODE, "Birth")
        if patient.deceasedDateTime is not None:
            self._emit(sid, _when(patient.deceasedDateTime), "MEDS_DEATH", "Death")

    # -- pass 2: everything else ------------------------------------------------------------
    def map(self, files: list[Path]) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(self.resources.values()), desc="FHIR pass 2/2 (events)", unit=" resources")
        for path in files:
            for where, obj, _ in self._read(path, report=False):
                bar.update()
                kind = obj["resourceType"]
                if kind in INDEXED:
                    continue
                if kind not in MAPPED:
                    self.skipped.ignore(kind, "resource type not mapped to events")
                    continue
                model = self._model(path, where, obj)
                if model is None:
                    continue
                try:
                    sid = self._subject(model, kind)
                    for when, code, desc, number, text, unit in getattr(self, MAPPED[kind])(model):
                        self._emit(sid, when, code, desc, number, text, unit)
                except _Fault as fault:
                    self.skipped.fault(kind, path, f"{where}, field {fault.field}", fault.expected)
                except _Ignore as reason:
                    self.skipped.ignore(kind, str(reason))
                if len(self.rows) >= 50_000:
                    self._flush()
        bar.close()
        self._flush()

    def _emit(self, sid, when, code, desc, number=None, text=None, unit=None) -> None:
        self.writer.describe(code, desc)
        self.rows.append((sid, when, code, number, text, unit))

    def _flush(self) -> None:
        self.writer.write_rows(self.rows)
        self.rows = []

    def _subject(self, model, kind: str) -> int:
        ref = getattr(model.subject, "reference", None) if model.subject is not None else None
        if not ref:
            raise _Fault(f"{kind}.subject", "expected a reference to a Patient")
        ref = ref.split("/_history/")[0]
        if ref in self.patients:
            return self.patients[ref]
        if not ref.startswith("urn:") and "/" in ref and "://" in ref:  # absolute URL: try Type/id
            short = "/".join(ref.rstrip("/").split("/")[-2:])
            if short in self.patients:
                return self.patients[short]
        if ref.startswith("Patient/") or ref.startswith("urn:") or "/Patient/" in ref:
            raise _Fault(f"{kind}.subject", "refers to a Patient that is not in the input")
        raise _Fault(f"{kind}.subject", "expected a reference to a Patient (found another resource type)")

    def _code(self, concept, field: str) -> tuple[str, str | None]:
        """(PREFIX//code, display) from the first coding in a known code system."""
        codings = getattr(concept, "coding", None) or []
        if not codings:
            raise _Fault(field, "expected a CodeableConcept with a coding")
        for coding in codings:
            prefix = self.systems.get(coding.system or "")
            if prefix and coding.code:
                return f"{prefix}//{coding.code}", coding.display or getattr(concept, "text", None)
        found = sorted({str(cd.system) for cd in codings})
        raise _Fault(
            field,
            f"expected a coding from a known code system; found {found} "
            "(add it to fhir.code_systems in the import config)",
        )

    @staticmethod
    def _status(model) -> None:
        if getattr(model, "status", None) == "entered-in-error":
            raise _Ignore("status entered-in-error")

    # -- one mapper per resource type: yield (time, code, description, number, text, unit) -----
    def _condition(self, m):
        verification = (
            m.verificationStatus.coding[0].code
            if m.verificationStatus and m.verificationStatus.coding
            else None
        )
        if verification in ("entered-in-error", "refuted"):
            raise _Ignore(f"verificationStatus {verification}")
        onset, recorded = _first(m.onsetDateTime, _start(m.onsetPeriod)), _first(m.recordedDate)
        # The later of onset and recording: a diagnosis recorded after a prediction time but
        # back-dated to an earlier onset was not known then (no leakage through back-dating).
        when = max((t for t in (onset, recorded) if t is not None), default=None)
        if when is None:
            raise _Fault("Condition.onset[x]", "expected onsetDateTime, onsetPeriod.start or recordedDate")
        code, desc = self._code(m.code, "Condition.code")
        yield when, code, desc, None, None, None

    def _observation(self, m):
        self._status(m)
        when = _first(m.effectiveDateTime, _start(m.effectivePeriod), m.effectiveInstant, m.issued)
        if when is None:
            raise _Fault(
                "Observation.effective[x]",
                "expected effectiveDateTime, effectivePeriod.start, "
                "effectiveInstant or issued (an Observation needs a time)",
            )
        code, desc = self._code(m.code, "Observation.code")
        parts = [(code, desc, m)]
        for i, comp in enumerate(m.component or []):
            parts.append((*self._code(comp.code, f"Observation.component[{i}].code"), comp))
        for k, (code, desc, holder) in enumerate(parts):
            number, text, unit = self._value(holder)
            if k == 0 and len(parts) > 1 and number is None and text is None:
                continue  # a panel (blood pressure) whose values sit in its components
            if unit and self.mapping.unit_in_code:
                code = f"{code}//{unit}"
            yield when, code, desc, number, text, unit

    def _value(self, holder) -> tuple[float | None, str | None, str | None]:
        if getattr(holder, "valueQuantity", None) is not None and holder.valueQuantity.value is not None:
            q = holder.valueQuantity
            return float(q.value), None, q.unit or q.code
        if getattr(holder, "valueInteger", None) is not None:
            return float(holder.valueInteger), None, None
        if getattr(holder, "valueBoolean", None) is not None:
            return float(holder.valueBoolean), None, None
        if getattr(holder, "valueString", None) is not None:
            return None, holder.valueString, None
        concept = getattr(holder, "valueCodeableConcept", None)
        if concept is not None:
            try:
                return None, self._code(concept, "value")[0], None
            except _Fault:
                return None, concept.text, None
        return None, None, None

    def _medication(self, m, kind: str) -> tuple[str, str | None]:
        if m.medicationCodeableConcept is not None:
            return self._code(m.medicationCodeableConcept, f"{kind}.medicationCodeableConcept")
        ref = m.medicationReference.reference if m.medicationReference is not None else None
        if ref and ref.startswith("#"):
            for contained in m.contained or []:
                if contained.id == ref[1:] and contained.get_resource_type() == "Medication":
                    return self._code(contained.code, f"{kind}.contained.Medication.code")
        if ref and ref in self.medications:
            return self.medications[ref]
        raise _Fault(f"{kind}.medication[x]", "refers to a Medication that is not in the input")

    def _medication_request(self, m):
        self._status(m)
        if m.authoredOn is None:
            raise _Fault("MedicationRequest.authoredOn", "expected the date the prescription was written")
        code, desc = self._medication(m, "MedicationRequest")
        yield _when(m.authoredOn), code, desc, None, None, None

    def _medication_statement(self, m):
        self._status(m)
        when = _first(m.effectiveDateTime, _start(m.effectivePeriod), m.dateAsserted)
        if when is None:
            raise _Fault("MedicationStatement.effective[x]", "expected effective[x] or dateAsserted")
        code, desc = self._medication(m, "MedicationStatement")
        yield when, code, desc, None, None, None

    def _procedure(self, m):
        self._status(m)
        when = _first(m.performedDateTime, _start(m.performedPeriod))
        if when is None:
            raise _Fault("Procedure.performed[x]", "expected performedDateTime or performedPeriod.start")
        code, desc = self._code(m.code, "Procedure.code")
        yield when, code, desc, None, None, None

    def _encounter(self, m):
        self._status(m)
        when = _start(m.period)
        if when is None:
            raise _Fault("Encounter.period.start", "expected the time the encounter began")
        cls = m.class_fhir
        yield when, f"ENCOUNTER//{cls.code}", cls.display or f"Encounter ({cls.code})", None, None, None

    def _document_reference(self, m):
        if m.status == "entered-in-error" or m.docStatus == "entered-in-error":
            raise _Ignore("status entered-in-error")
        when = _first(m.date, _start(m.context.period) if m.context else None)
        if when is None:
            raise _Fault("DocumentReference.date", "expected date or context.period.start")
        code, desc = _note_code(m.type, "document")
        texts, left_out = [], []
        for i, content in enumerate(m.content or []):
            a = content.attachment
            kind = (a.contentType or "text/plain").split(";")[0].strip().lower()
            if a.data is None:
                left_out.append("attachment has no inline data (url only)")
                continue
            if not kind.startswith("text/"):
                left_out.append(f"attachment is not text ({kind})")
                continue
            try:
                text = a.data.decode(_charset(a.contentType))
            except (UnicodeDecodeError, LookupError):
                raise _Fault(
                    f"DocumentReference.content[{i}].attachment.data",
                    f"expected base64 of {kind} text in {_charset(a.contentType)}",
                ) from None
            texts.append(_html_text(text) if kind == "text/html" else text)
        if not any(t.strip() for t in texts):
            if left_out:
                raise _Ignore(left_out[0])
            raise _Fault("DocumentReference.content", "expected an attachment with text")
        yield when, code, desc, None, "\n".join(texts), None

    def _composition(self, m):
        self._status(m)
        code, desc = _note_code(m.type, "composition")
        parts = [m.title or ""]
        stack = list(m.section or [])
        while stack:
            section = stack.pop(0)
            parts += [section.title or "", _html_text(section.text.div) if section.text else ""]
            stack = list(section.section or []) + stack
        text = "\n".join(p for p in parts if p.strip())
        if not text.strip():
            raise _Ignore("no section text")
        yield _when(m.date), code, desc, None, text, None


def _note_code(concept, default: str) -> tuple[str, str | None]:
    """NOTE//<type code> (e.g. NOTE//34117-2), described by the type's display text."""
    for coding in getattr(concept, "coding", None) or []:
        if coding.code:
            return f"{c.NOTE_PREFIX}{coding.code}", coding.display or getattr(concept, "text", None)
    text = getattr(concept, "text", None)
    if text:
        return f"{c.NOTE_PREFIX}{'_'.join(text.lower().split())}", text
    return f"{c.NOTE_PREFIX}{default}", f"Clinical note ({default})"


def _charset(content_type: str | None) -> str:
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


class _TextOnly(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _html_text(html: str) -> str:
    """The text of an XHTML narrative (FHIR's div), through the standard library's HTML parser."""
    parser = _TextOnly()
    parser.feed(html)
    parser.close()
    return " ".join(" ".join(parser.parts).split())


def _start(period):
    return None if period is None else period.start


def _first(*values):
    for value in values:
        if value is not None:
            return _when(value)
    return None


def _when(value) -> datetime:
    """A FHIR date/dateTime/instant as a naive UTC datetime (MEDS times carry no zone).

    Partial dates ("1960", "1960-05") mean their first day, as MEDS ETLs read them."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    text = str(value)
    for fmt in ("%Y-%m-%d", "%Y-%m", "%Y"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise _Fault("time", "expected a FHIR date or dateTime")
