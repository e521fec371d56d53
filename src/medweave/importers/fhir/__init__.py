"""FHIR R4 JSON -> MEDS events, through the fhir.resources models (their R4B package).

Why R4B: fhir.resources 8.x ships R5 (default), R4B and STU3 models on pydantic 2; R4 proper is
only in the 6.x line, which needs pydantic 1 and would clash with the rest of medweave. R4B is
R4 with a few non-clinical resources revised (subscriptions, evidence, medication knowledge): the
clinical resources medweave maps validate R4 JSON (Synthea's included) unchanged.

    reading.py   which files to read (folders, Bulk Data manifests) and the resources in each
    codes.py     CodeableConcept -> VOCAB//code: configured, local (derived prefix) or text-only
    mappers.py   one mapper per resource type -> (time, code, description, value, text, unit)
    notes.py     clinical text: note codes, base64 attachments, XHTML narratives
    importer.py  the two passes (patients, then events) and import_fhir

Strict mode stops on corrupt input (invalid JSON, a resource that fails validation, a reference
to a Patient that is not there, an event without a time); valid FHIR that medweave does not map
(a type, a status such as entered-in-error) is counted in the summary, not an error. Empty
strings, which FHIR forbids but exporters write for "unknown", are read as absent and counted
(``empty_values_dropped``).
"""

from medweave.importers.fhir.codes import CODE_SYSTEMS, FhirMapping, normalise_text
from medweave.importers.fhir.importer import import_fhir
from medweave.importers.fhir.mappers import MAPPED
from medweave.importers.fhir.reading import fhir_inputs

__all__ = ["CODE_SYSTEMS", "MAPPED", "FhirMapping", "fhir_inputs", "import_fhir", "normalise_text"]
