"""The two passes of a FHIR import, and ``import_fhir``.

Files are read twice, one file and one line or Bundle at a time: pass 1 indexes Patients (and
Medications, for ``medicationReference``), pass 2 maps every other resource, so a reference may
point to a resource in any file, and memory holds the patient index, never the events.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from medweave.data import contract as c
from medweave.importers.cohort_writer import CohortWriter, ImportOptions, Skipped, log_summary
from medweave.importers.fhir.codes import Coder, FhirMapping
from medweave.importers.fhir.mappers import MAPPED, EventMapper, Fault, Ignore, when
from medweave.importers.fhir.reading import Reader, fhir_inputs

log = logging.getLogger(__name__)

SEX_CODES = {"female": "SEX//F", "male": "SEX//M", "other": "SEX//O"}  # as the sandbox writes them
INDEXED = ("Patient", "Medication", "Device")  # read in pass 1; the last two name what others use


def import_fhir(
    inputs, out: str | Path, options: ImportOptions | None = None, mapping: FhirMapping | None = None
) -> Path:
    """Import FHIR files (or a Bulk Data export) into a cohort at ``out`` and return it."""
    options = options or ImportOptions()
    mapping = mapping or FhirMapping()
    skipped = Skipped(options.lenient)
    found = fhir_inputs(inputs, skipped.fault)
    files = found.sorted()
    with CohortWriter(out, options, "fhir") as writer:
        importer = _FhirImporter(writer, skipped, mapping)
        importer.index(files)
        importer.map(files)
        summary = {
            "format": "fhir",
            "fhir_version": "R4 (fhir.resources R4B models)",
            "files": len(files),
            "manifests": found.manifests,
            "skipped_files": dict(importer.reader.skipped_files + found.not_read),
            "resources": dict(sorted(importer.resources.items())),
            "imported": dict(sorted(importer.imported.items())),
            "text_only_codes": dict(sorted(importer.coder.text_only.items())),
            "duplicate_notes": importer.duplicate_notes,
            "elements_dropped": dict(sorted(importer.dropped.items())),
            "code_systems": importer.coder.table(),
            **skipped.as_dict(),
        }
        root = writer.finish(summary)
    log_summary(root, json.loads((root / c.DATASET_METADATA).read_text())["medweave"]["import"])
    return root


class _FhirImporter:
    def __init__(self, writer: CohortWriter, skipped: Skipped, mapping: FhirMapping):
        self.writer, self.skipped = writer, skipped
        self.reader = Reader(skipped.fault)
        self.coder = Coder(mapping)
        self.mapper = EventMapper(self.coder, mapping.unit_in_code)
        self.patients: dict[str, int] = {}  # reference forms ("Patient/x", fullUrl) -> subject_id
        self.resources: Counter[str] = Counter()  # read, per type
        self.imported: Counter[str] = Counter()  # gave at least one event, per type
        self.notes: set[bytes] = set()  # (subject, time, text) digests: a note is written once
        self.duplicate_notes = 0
        self.dropped: Counter[str] = Counter()  # element -> times read as absent ("", unknown)
        self.rows: list[tuple] = []

    def _model(self, path, where, obj):
        """The validated fhir.resources model, or a fault naming the first invalid field."""
        from fhir.resources.R4B import get_fhir_model_class
        from pydantic import ValidationError

        kind = obj["resourceType"]
        try:
            try:
                return get_fhir_model_class(kind).model_validate(obj)
            except ValidationError as first_err:
                repaired, dropped = self._repaired(kind, obj, first_err)
                if repaired is None:
                    raise
                model = get_fhir_model_class(kind).model_validate(repaired)
                for name, n in dropped.items():
                    self.dropped[name] += n
                return model
        except ValidationError as err:
            first = err.errors()[0]  # its message and place only: the input may hold identifiers
            place = ".".join(str(p) for p in first["loc"]) or "resource"
            self.skipped.fault(
                kind, path, f"{where}, field {kind}.{place}", f"fails FHIR R4 validation: {first['msg']}"
            )
        except (KeyError, ValueError) as err:  # not a resource type the models know
            self.skipped.fault(kind, path, where, f"expected a FHIR R4 resource type ({err})")
        return None

    @staticmethod
    def _repaired(kind: str, obj: dict, err) -> tuple[dict | None, Counter]:
        """``obj`` read as a tolerant FHIR parser reads it (HAPI's lenient handler does the same):
        empty strings as absent, elements R4 does not define dropped; None if that is not the
        fault. What was dropped is counted by element path, never by value."""
        dropped: Counter[str] = Counter()
        unknown = [e["loc"] for e in err.errors() if e["type"] == "extra_forbidden"]
        repaired, n = without_empty(obj)
        if n:
            dropped[f"{kind}: empty string"] += n
        for loc in unknown:
            holder = repaired
            for step in loc[:-1]:
                try:
                    holder = holder[step]
                except (KeyError, IndexError, TypeError):
                    holder = None
                    break
            if isinstance(holder, dict) and loc[-1] in holder:
                del holder[loc[-1]]
                path = ".".join(str(p) for p in loc if not isinstance(p, int))
                dropped[f"{kind}.{path}: not an R4 element"] += 1
        return (repaired if dropped else None), dropped

    # -- pass 1: Patients and Medications ---------------------------------------------------
    def index(self, files: list[tuple[Path, bool]]) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(desc="FHIR pass 1/2 (patients)", unit=" resources", leave=False)
        for path, ndjson in files:
            for where, obj, full_url in self.reader.read(path, ndjson, report=True):
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
                if kind != "Patient":
                    index, concept, name = (
                        (self.mapper.medications, model.code, "Medication.code")
                        if kind == "Medication"
                        else (self.mapper.devices, model.type, "Device.type")
                    )
                    try:
                        index.update(dict.fromkeys(refs, self.mapper.code(concept, name)))
                    except Ignore as reason:
                        self.skipped.ignore(kind, str(reason))
                        continue
                    self.imported[kind] += 1
                    continue
                if any(ref in self.patients for ref in refs):
                    self.skipped.fault(
                        kind, path, f"{where}, field Patient.id", "expected each Patient once (read before)"
                    )
                    continue
                sid = self.writer.subject_id(refs[0])
                self.patients.update(dict.fromkeys(refs, sid))
                self._patient_events(sid, model)
                self.imported[kind] += 1
        bar.close()
        self._flush()

    def _patient_events(self, sid: int, patient) -> None:
        if patient.gender in SEX_CODES:
            self._emit(sid, None, SEX_CODES[patient.gender], f"Sex: {patient.gender}")
        if patient.birthDate is not None:
            self._emit(sid, when(patient.birthDate), c.BIRTH_CODE, "Birth")
        if patient.deceasedDateTime is not None:
            self._emit(sid, when(patient.deceasedDateTime), "MEDS_DEATH", "Death")

    # -- pass 2: everything else ------------------------------------------------------------
    def map(self, files: list[tuple[Path, bool]]) -> None:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(self.resources.values()), desc="FHIR pass 2/2 (events)", unit=" resources")
        for path, ndjson in files:
            for where, obj, _ in self.reader.read(path, ndjson, report=False):
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
                    events = list(self.mapper.events(kind, model))
                except Fault as fault:
                    self.skipped.fault(kind, path, f"{where}, field {fault.field}", fault.expected)
                    continue
                except Ignore as reason:
                    self.skipped.ignore(kind, str(reason))
                    continue
                kept = [e for e in events if not self._seen_note(sid, e)]
                for event in kept:
                    self._emit(sid, *event)
                self.imported[kind] += bool(events)  # a duplicate note is still in the cohort
                if len(self.rows) >= 50_000:
                    self._flush()
        bar.close()
        self._flush()

    def _seen_note(self, sid: int, event) -> bool:
        """A note already written for this subject at this time with this text (a DiagnosticReport
        and a DocumentReference often carry the same one)."""
        at, code, _, _, text, _ = event
        if not code.startswith(c.NOTE_PREFIX) or text is None:
            return False
        key = hashlib.blake2b(f"{sid}\0{at}\0{text}".encode(), digest_size=12).digest()
        if key in self.notes:
            self.duplicate_notes += 1
            return True
        self.notes.add(key)
        return False

    def _emit(self, sid, when, code, desc, number=None, text=None, unit=None) -> None:
        self.writer.describe(code, desc)
        self.rows.append((sid, when, code, number, text, unit))

    def _flush(self) -> None:
        self.writer.write_rows(self.rows)
        self.rows = []

    def _subject(self, model, kind: str) -> int:
        field = MAPPED[kind][1]
        holder = getattr(model, field, None)
        ref = getattr(holder, "reference", None) if holder is not None else None
        if not ref:
            raise Fault(f"{kind}.{field}", "expected a reference to a Patient")
        ref = ref.split("/_history/")[0]
        if ref in self.patients:
            return self.patients[ref]
        if not ref.startswith("urn:") and "/" in ref and "://" in ref:  # absolute URL: try Type/id
            short = "/".join(ref.rstrip("/").split("/")[-2:])
            if short in self.patients:
                return self.patients[short]
        if ref.startswith("Patient/") or ref.startswith("urn:") or "/Patient/" in ref:
            raise Fault(f"{kind}.{field}", "refers to a Patient that is not in the input")
        raise Fault(f"{kind}.{field}", "expected a reference to a Patient (found another resource type)")


def without_empty(obj):
    """``obj`` without empty strings (and the objects and lists left empty by that), and how many
    were dropped. FHIR forbids ``""``; exporters write it for "unknown", so it is read as absent."""
    if isinstance(obj, dict):
        out, n = {}, 0
        for key, value in obj.items():
            value, k = without_empty(value)
            n += k
            if value in ("", {}, []):
                n += value == ""  # an object or list emptied by this was counted inside
                continue
            out[key] = value
        return out, n
    if isinstance(obj, list):
        out, n = [], 0
        for value in obj:
            value, k = without_empty(value)
            n += k
            if value in ("", {}, []):
                n += value == ""
                continue
            out.append(value)
        return out, n
    return obj, 0
