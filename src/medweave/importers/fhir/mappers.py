"""One mapper per FHIR resource type: a validated resource -> MEDS events.

Each mapper yields ``(time, code, description, numeric_value, text_value, unit)``; ``MAPPED``
says which resource types have one and which field names their Patient. The README's "Real data
in" table lists what each type becomes and why the other types are left out.

Codes that are about something other than the patient's own diagnosis, drug or test carry a
qualifier before the vocabulary, so they never share a code with it: ``ALLERGY//RXNORM//7980``
(allergic to penicillin) is not ``RXNORM//7980`` (given penicillin), nor is
``FAMILY_HISTORY//SNOMED//254837009`` the patient's own breast cancer, ``ORDER//LOINC//4548-4`` an
HbA1c result (nor ``REPORT//LOINC//4548-4`` the report that carries it), or ``CAREPLAN//``,
``GOAL//`` and ``SPECIMEN//`` codes what was done.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from medweave.data import contract as c
from medweave.importers.fhir.codes import Coder, NoCode
from medweave.importers.fhir.notes import attachments_text, html_text, note_code

# resource type -> (method of EventMapper, the field that references the Patient)
MAPPED = {
    "Condition": ("condition", "subject"),
    "Observation": ("observation", "subject"),
    "MedicationRequest": ("medication_request", "subject"),
    "MedicationStatement": ("medication_statement", "subject"),
    "MedicationAdministration": ("medication_administration", "subject"),
    "MedicationDispense": ("medication_dispense", "subject"),
    "Immunization": ("immunization", "patient"),
    "Procedure": ("procedure", "subject"),
    "Encounter": ("encounter", "subject"),
    "AllergyIntolerance": ("allergy_intolerance", "patient"),
    "ServiceRequest": ("service_request", "subject"),
    "Specimen": ("specimen", "subject"),
    "FamilyMemberHistory": ("family_member_history", "patient"),
    "ImagingStudy": ("imaging_study", "subject"),
    "DeviceUseStatement": ("device_use_statement", "subject"),
    "CarePlan": ("care_plan", "subject"),
    "Goal": ("goal", "subject"),
    "DiagnosticReport": ("diagnostic_report", "subject"),
    "DocumentReference": ("document_reference", "subject"),
    "Composition": ("composition", "subject"),
    "ClinicalImpression": ("clinical_impression", "subject"),
}
GENERIC_CAREPLAN = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"  # "assess-plan": says nothing
DICOM_UID = "urn:dicom:uid"


class Fault(Exception):
    """A resource that cannot be mapped: ``field`` and what was ``expected`` there."""

    def __init__(self, field: str, expected: str):
        super().__init__(f"field {field}: {expected}")
        self.field, self.expected = field, expected


class Ignore(Exception):
    """A resource left out on purpose (entered in error, refuted, a PDF only): counted, no warning."""


class EventMapper:
    """The mappers; ``medications`` and ``devices`` map references to Medication and Device
    resources (indexed in pass 1) to their (code, description)."""

    def __init__(self, coder: Coder, unit_in_code: bool = False):
        self.coder, self.unit_in_code = coder, unit_in_code
        self.medications: dict[str, tuple[str, str | None]] = {}
        self.devices: dict[str, tuple[str, str | None]] = {}

    def events(self, kind: str, model):
        return getattr(self, MAPPED[kind][0])(model)

    def code(self, concept, field: str) -> tuple[str, str | None]:
        if concept is None:
            raise Ignore(f"{field} missing")
        try:
            return self.coder.code(concept, field)
        except NoCode:
            raise Ignore(f"{field} has no coding and no text") from None

    @staticmethod
    def status(model, left_out=("entered-in-error",)) -> None:
        if getattr(model, "status", None) in left_out:
            raise Ignore(f"status {model.status}")

    # -- the patient's own diagnoses, tests and treatments ----------------------------------
    def condition(self, m):
        _refuse_unverified(m)
        # The later of onset and recording: a diagnosis recorded after a prediction time but
        # back-dated to an earlier onset was not known then (no leakage through back-dating).
        when = latest(first(m.onsetDateTime, start(m.onsetPeriod)), first(m.recordedDate))
        if when is None:
            raise Fault("Condition.onset[x]", "expected onsetDateTime, onsetPeriod.start or recordedDate")
        yield (when, *self.code(m.code, "Condition.code"), None, None, None)

    def observation(self, m):
        self.status(m)
        when = first(m.effectiveDateTime, start(m.effectivePeriod), m.effectiveInstant, m.issued)
        if when is None:
            raise Fault(
                "Observation.effective[x]",
                "expected effectiveDateTime, effectivePeriod.start, "
                "effectiveInstant or issued (an Observation needs a time)",
            )
        parts = [(*self.code(m.code, "Observation.code"), m)]
        for comp in m.component or []:
            parts.append((*self.code(comp.code, "Observation.component.code"), comp))
        for k, (code, desc, holder) in enumerate(parts):
            number, text, unit = self.value(holder)
            if k == 0 and len(parts) > 1 and number is None and text is None:
                continue  # a panel (blood pressure) whose values sit in its components
            if unit and self.unit_in_code:
                code = f"{code}//{unit}"
            yield when, code, desc, number, text, unit

    def value(self, holder) -> tuple[float | None, str | None, str | None]:
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
            if any(cd.code for cd in concept.coding or []):
                return None, self.coder.code(concept, "value")[0], None
            return None, concept.text, None  # a text answer stays text
        return None, None, None

    def medication(self, m, kind: str) -> tuple[str, str | None]:
        if m.medicationCodeableConcept is not None:
            return self.code(m.medicationCodeableConcept, f"{kind}.medicationCodeableConcept")
        ref = m.medicationReference.reference if m.medicationReference is not None else None
        if ref and ref.startswith("#"):
            for contained in m.contained or []:
                if contained.id == ref[1:] and contained.get_resource_type() == "Medication":
                    return self.code(contained.code, f"{kind}.contained.Medication.code")
        if ref and ref in self.medications:
            return self.medications[ref]
        raise Fault(f"{kind}.medication[x]", "refers to a Medication that is not in the input")

    def medication_request(self, m):
        self.status(m)
        if m.authoredOn is None:
            raise Fault("MedicationRequest.authoredOn", "expected the date the prescription was written")
        yield (when(m.authoredOn), *self.medication(m, "MedicationRequest"), None, None, None)

    def medication_statement(self, m):
        self.status(m)
        at = first(m.effectiveDateTime, start(m.effectivePeriod), m.dateAsserted)
        if at is None:
            raise Fault("MedicationStatement.effective[x]", "expected effective[x] or dateAsserted")
        yield (at, *self.medication(m, "MedicationStatement"), None, None, None)

    def medication_administration(self, m):
        """The drug's code (as prescribed), the dose as numeric_value + unit."""
        self.status(m)
        at = first(m.effectiveDateTime, start(m.effectivePeriod))
        if at is None:
            raise Fault(
                "MedicationAdministration.effective[x]", "expected effectiveDateTime or effectivePeriod"
            )
        dose = m.dosage.dose if m.dosage is not None else None
        number, unit = quantity(dose)
        code, desc = not_done(m, *self.medication(m, "MedicationAdministration"))
        yield at, code, desc, number, None, unit

    def medication_dispense(self, m):
        """The drug's code at hand-over, the quantity dispensed as numeric_value + unit."""
        self.status(m, ("entered-in-error", "cancelled", "declined", "stopped"))
        at = first(m.whenHandedOver, m.whenPrepared)
        if at is None:
            raise Fault("MedicationDispense.whenHandedOver", "expected whenHandedOver or whenPrepared")
        number, unit = quantity(m.quantity)
        yield at, *self.medication(m, "MedicationDispense"), number, None, unit

    def immunization(self, m):
        self.status(m)
        at = first(m.occurrenceDateTime, m.recorded)
        if at is None:
            raise Fault("Immunization.occurrence[x]", "expected occurrenceDateTime or recorded")
        code, desc = not_done(m, *self.code(m.vaccineCode, "Immunization.vaccineCode"))
        yield at, code, desc, None, None, None

    def procedure(self, m):
        self.status(m)
        at = first(m.performedDateTime, start(m.performedPeriod))
        if at is None:
            raise Fault("Procedure.performed[x]", "expected performedDateTime or performedPeriod.start")
        code, desc = not_done(m, *self.code(m.code, "Procedure.code"))
        yield at, code, desc, None, None, None

    def encounter(self, m):
        self.status(m, ("entered-in-error", "cancelled"))
        at = start(m.period)
        if at is None:
            raise Fault("Encounter.period.start", "expected the time the encounter began")
        cls = m.class_fhir
        yield when(at), f"ENCOUNTER//{cls.code}", cls.display or f"Encounter ({cls.code})", None, None, None

    # -- about the patient, not a diagnosis or treatment: qualified codes -------------------
    def allergy_intolerance(self, m):
        """ALLERGY//<substance code>, from when it was known (the later of onset and recording)."""
        _refuse_unverified(m)
        at = latest(first(m.onsetDateTime, start(m.onsetPeriod)), first(m.recordedDate))
        if at is None:
            raise Fault("AllergyIntolerance.onset[x]", "expected onsetDateTime, onsetPeriod or recordedDate")
        code, desc = self.code(m.code, "AllergyIntolerance.code")
        yield at, f"ALLERGY//{code}", desc and f"Allergy: {desc}", None, None, None

    def service_request(self, m):
        """ORDER//<what was ordered>, at the time of the order."""
        self.status(m)
        at = first(m.authoredOn, m.occurrenceDateTime, start(m.occurrencePeriod))
        if at is None:
            raise Fault("ServiceRequest.authoredOn", "expected authoredOn or occurrence[x]")
        code, desc = self.code(m.code, "ServiceRequest.code")
        yield at, f"ORDER//{code}", desc and f"Order: {desc}", None, None, None

    def specimen(self, m):
        """SPECIMEN//<type>, at collection (else receipt)."""
        self.status(m)
        coll = m.collection
        at = first(coll.collectedDateTime if coll else None, start(coll.collectedPeriod) if coll else None)
        at = at or first(m.receivedTime)
        if at is None:
            raise Fault(
                "Specimen.collection.collected[x]", "expected collection.collected[x] or receivedTime"
            )
        code, desc = self.code(m.type, "Specimen.type")
        yield at, f"SPECIMEN//{code}", desc and f"Specimen: {desc}", None, None, None

    def family_member_history(self, m):
        """FAMILY_HISTORY//<condition> per condition (else the relative, ``//deceased`` when so).

        Without a date it is a static event (no time), as MEDS keeps timeless facts: a relative's
        history is about the time before the patient's own record."""
        self.status(m)
        at = first(m.date)
        codes = [self.code(cond.code, "FamilyMemberHistory.condition.code") for cond in m.condition or []]
        if not codes:
            code, desc = self.code(m.relationship, "FamilyMemberHistory.relationship")
            dead = m.deceasedBoolean or any(
                v is not None for v in (m.deceasedAge, m.deceasedDate, m.deceasedRange, m.deceasedString)
            )
            codes = [(f"{code}//deceased", desc and f"{desc} (deceased)") if dead else (code, desc)]
        for code, desc in codes:
            yield at, f"FAMILY_HISTORY//{code}", desc and f"Family history: {desc}", None, None, None

    def care_plan(self, m):
        """CAREPLAN//<category> and CAREPLAN//<activity code>, at the plan's start."""
        self.status(m, ("entered-in-error", "revoked"))
        at = first(start(m.period), m.created)
        if at is None:
            raise Fault("CarePlan.period.start", "expected period.start or created")
        concepts = [
            (cat, "CarePlan.category")
            for cat in m.category or []
            if not all((cd.system or "") == GENERIC_CAREPLAN for cd in cat.coding or []) or not cat.coding
        ]
        concepts += [
            (a.detail.code, "CarePlan.activity.detail.code")
            for a in m.activity or []
            if a.detail is not None and a.detail.code is not None
        ]
        if not concepts:
            raise Ignore("no category or activity code beyond the generic assess-plan")
        for concept, field in concepts:
            code, desc = self.code(concept, field)
            yield at, f"CAREPLAN//{code}", desc and f"Care plan: {desc}", None, None, None

    def goal(self, m):
        """GOAL//<description>, at its start (else its status date)."""
        if m.lifecycleStatus in ("entered-in-error", "rejected", "cancelled"):
            raise Ignore(f"lifecycleStatus {m.lifecycleStatus}")
        at = first(m.startDate, m.statusDate)
        if at is None:
            raise Fault("Goal.start[x]", "expected startDate or statusDate (a Goal needs a time)")
        code, desc = self.code(m.description, "Goal.description")
        yield at, f"GOAL//{code}", desc and f"Goal: {desc}", None, None, None

    def imaging_study(self, m):
        """IMAGING//<DICOM modality> at ``started``; text_value = the StudyInstanceUID, which joins
        the study to its DICOM files (tag 0020,000D) for imaging/index.parquet."""
        self.status(m, ("entered-in-error", "cancelled"))
        at = first(m.started, *(s.started for s in m.series or []))
        if at is None:
            raise Fault("ImagingStudy.started", "expected started (or series.started)")
        codings = list(m.modality or []) + [s.modality for s in m.series or [] if s.modality is not None]
        if codings and codings[0].code:
            modality = codings[0].code
            desc = codings[0].display or f"Imaging study ({modality})"
        else:
            modality, desc = "study", "Imaging study"
        uid = next(
            (i.value for i in m.identifier or [] if i.system == DICOM_UID and i.value),
            None,
        )
        yield at, f"IMAGING//{modality}", desc, None, uid.removeprefix("urn:oid:") if uid else None, None

    def device_use_statement(self, m):
        """DEVICE//<the Device's type> from when its use began (a Device alone says what it is,
        not when a patient had it)."""
        self.status(m, ("entered-in-error",))
        at = first(m.timingDateTime, start(m.timingPeriod), m.recordedOn)
        if at is None:
            raise Fault("DeviceUseStatement.timing[x]", "expected timing[x] or recordedOn")
        ref = m.device.reference if m.device is not None else None
        if ref and ref.startswith("#"):
            found = [d for d in m.contained or [] if d.id == ref[1:] and d.get_resource_type() == "Device"]
            code, desc = self.code(
                found[0].type if found else None, "DeviceUseStatement.contained.Device.type"
            )
        elif ref in self.devices:
            code, desc = self.devices[ref]
        else:
            raise Fault("DeviceUseStatement.device", "refers to a Device that is not in the input")
        yield at, f"DEVICE//{code}", desc and f"Device: {desc}", None, None, None

    # -- clinical text ---------------------------------------------------------------------
    def diagnostic_report(self, m):
        """REPORT//<the report's code> (text_value: its first conclusionCode; qualified, since a
        one-test report shares its code with the Observation that holds the value), then its text:
        ``conclusion`` and inline text ``presentedForm`` under NOTE//<report code>."""
        self.status(m, ("entered-in-error", "cancelled"))
        at = first(m.effectiveDateTime, start(m.effectivePeriod), m.issued)
        if at is None:
            raise Fault("DiagnosticReport.effective[x]", "expected effective[x] or issued")
        try:
            code, desc = self.code(m.code, "DiagnosticReport.code")
        except Ignore:  # an empty code: the category (Radiology, LAB) still says what it was
            if not m.category:
                raise
            code, desc = self.code(m.category[0], "DiagnosticReport.category")
        conclusion = None
        for concept in m.conclusionCode or []:
            if any(cd.code for cd in concept.coding or []):
                conclusion = self.coder.code(concept, "DiagnosticReport.conclusionCode")[0]
                break
        yield at, f"REPORT//{code}", desc and f"Report: {desc}", None, conclusion, None
        texts = [m.conclusion or ""] + attachments_text(
            m.presentedForm or [], "DiagnosticReport.presentedForm"
        )[0]
        text = "\n".join(t for t in texts if t.strip())
        if text:
            yield at, f"{c.NOTE_PREFIX}{code.split('//', 1)[-1]}", desc, None, text, None

    def document_reference(self, m):
        if m.status == "entered-in-error" or m.docStatus == "entered-in-error":
            raise Ignore("status entered-in-error")
        at = first(m.date, start(m.context.period) if m.context else None)
        if at is None:
            raise Fault("DocumentReference.date", "expected date or context.period.start")
        code, desc = note_code(m.type, "document")
        texts, left_out = attachments_text(
            [cn.attachment for cn in m.content or []], "DocumentReference.content"
        )
        if not any(t.strip() for t in texts):
            if left_out:
                raise Ignore(left_out[0])
            raise Fault("DocumentReference.content", "expected an attachment with text")
        yield at, code, desc, None, "\n".join(texts), None

    def composition(self, m):
        self.status(m)
        code, desc = note_code(m.type, "composition")
        parts = [m.title or ""]
        stack = list(m.section or [])
        while stack:
            section = stack.pop(0)
            parts += [section.title or "", html_text(section.text.div) if section.text else ""]
            stack = list(section.section or []) + stack
        text = "\n".join(p for p in parts if p.strip())
        if not text.strip():
            raise Ignore("no section text")
        yield when(m.date), code, desc, None, text, None

    def clinical_impression(self, m):
        """An assessment's description and summary as a note (NOTE//<code>)."""
        self.status(m)
        at = first(m.effectiveDateTime, start(m.effectivePeriod), m.date)
        if at is None:
            raise Fault("ClinicalImpression.effective[x]", "expected effective[x] or date")
        text = "\n".join(t for t in (m.description, m.summary) if t and t.strip())
        if not text:
            raise Ignore("no description or summary text")
        code, desc = note_code(m.code, "clinical_impression")
        yield at, code, desc, None, text, None


def not_done(model, code: str, desc: str | None) -> tuple[str, str | None]:
    """NOT_DONE//<code> for a vaccine, drug or procedure recorded as not given (refused,
    contraindicated): kept, since that is clinical information, but never as the thing itself."""
    if getattr(model, "status", None) != "not-done":
        return code, desc
    return f"NOT_DONE//{code}", desc and f"Not done: {desc}"


def quantity(q) -> tuple[float | None, str | None]:
    if q is None or q.value is None:
        return None, None
    return float(q.value), q.unit or q.code


def start(period):
    return None if period is None else period.start


def first(*values):
    for value in values:
        if value is not None:
            return when(value)
    return None


def latest(*times):
    return max((t for t in times if t is not None), default=None)


def when(value) -> datetime:
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
    raise Fault("time", "expected a FHIR date or dateTime")


def _refuse_unverified(m) -> None:
    """A Condition or AllergyIntolerance entered in error or refuted is left out (counted)."""
    coding = m.verificationStatus.coding if m.verificationStatus else None
    verification = coding[0].code if coding else None
    if verification in ("entered-in-error", "refuted"):
        raise Ignore(f"verificationStatus {verification}")
