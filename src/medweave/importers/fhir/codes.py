"""FHIR codes -> MEDS codes (``VOCAB//code``), and the table of code systems an import saw.

A CodeableConcept becomes one MEDS code, chosen in this order:

1. the first coding in a configured system (``CODE_SYSTEMS`` + ``fhir.code_systems``):
   ``ICD10CM//E11.9``, ``LOINC//4548-4``;
2. else the first coding in any other system, under a prefix derived from its URI
   (``http://clinosim.dev/fhir/CodeSystem/nursing-scores`` -> ``NURSING-SCORES//...``,
   ``urn:oid:1.2.392.200119.4.504`` -> ``OID_1.2.392.200119.4.504//...``; see ``derive_prefix``);
   a coding with a code but no system is ``LOCAL//<code>``;
3. else, a concept with only ``text`` (a free-text drug): ``fhir.text_codes`` maps its normalised
   text to a code, or it becomes ``TEXT//<normalised text>`` (``normalise_text``), counted per field.

Local codes are kept, not dropped: a model learns from them as from any code, and the summary's
``code_systems`` table says which URI got which prefix. Set ``fhir.code_systems`` for a stable,
readable prefix per site system (derived prefixes change if two systems collide).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

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
    "http://dicom.nema.org/resources/ontology/DCM": "DCM",
    "urn:oid:1.2.208.176.2.1": "NPU",  # Danish/Swedish laboratory terminology (IUPAC NPU)
}
TEXT_PREFIX = "TEXT"
LOCAL_PREFIX = "LOCAL"  # a coding with a code and no system
# Path parts that say "this is a code system" and nothing about which one.
_GENERIC = {"fhir", "codesystem", "codesystems", "cs", "valueset", "sid", "terminology", "r4", "ns"}
_TEXT_MAX = 64


@dataclass
class FhirMapping:
    """How FHIR codes become MEDS codes.

    Args:
        code_systems: code system URL -> prefix, added to (or overriding) ``CODE_SYSTEMS``.
        text_codes: normalised text (``normalise_text``) -> MEDS code, for concepts that have only
            text (``{"iv_normal_saline": "RXNORM//313002"}``); others become ``TEXT//<text>``.
        unit_in_code: also put an Observation's unit into its code ("LOINC//2345-7//mg/dL"), so
            values in different units never share a code; the unit column is written either way.
    """

    code_systems: dict = field(default_factory=dict)
    text_codes: dict = field(default_factory=dict)
    unit_in_code: bool = False

    def systems(self) -> dict[str, str]:
        return {**CODE_SYSTEMS, **dict(self.code_systems)}


class NoCode(Exception):
    """A concept with neither a coding nor text: nothing to name the event by."""


def normalise_text(text: str) -> str:
    """A stable code from free text: NFKC, case-folded, runs of anything but letters and digits
    as one ``_``; texts longer than 64 characters keep 55 and a hash of the whole.

    >>> normalise_text("IV  Normal-Saline 0.9%")
    'iv_normal_saline_0_9'
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    code = re.sub(r"[\W_]+", "_", folded).strip("_") or "empty"
    if len(code) > _TEXT_MAX:
        code = f"{code[:55]}_{hashlib.blake2b(code.encode(), digest_size=4).hexdigest()}"
    return code


def derive_prefix(system: str) -> str:
    """A readable MEDS vocabulary for a code system URI: the last specific part of its path
    (or its host), upper-cased; ``urn:oid:X`` -> ``OID_X``; ``urn:uuid:X`` -> ``UUID_<8 hex>``."""
    if system.startswith("urn:oid:"):
        return "OID_" + system[8:]
    if system.startswith("urn:uuid:"):
        return "UUID_" + system[9:17]
    if system.startswith("urn:"):
        parts = [p for p in system[4:].split(":") if p]
    else:
        url = urlparse(system)
        parts = [url.netloc] + [p for p in url.path.split("/") if p]
    specific = [p for p in parts if p.lower() not in _GENERIC] or parts or ["system"]
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", specific[-1]).strip("_").upper() or "SYSTEM"


class Coder:
    """Turns concepts into codes and remembers each system's prefix and how often it was used."""

    def __init__(self, mapping: FhirMapping):
        self.mapping = mapping
        self.known = mapping.systems()
        self.prefixes: dict[str, str] = dict(self.known)  # every system seen -> its prefix
        self.taken = set(self.known.values()) | {TEXT_PREFIX, LOCAL_PREFIX}
        self.used: Counter[str] = Counter()  # system -> codes taken from it
        self.text_only: Counter[str] = Counter()  # field -> concepts coded from their text
        self.text_codes = {normalise_text(str(k)): v for k, v in dict(mapping.text_codes).items()}

    def prefix(self, system: str) -> str:
        prefix = self.prefixes.get(system)
        if prefix is None:
            prefix = derive_prefix(system)
            if prefix in self.taken:  # two systems, one name: keep them apart
                prefix = f"{prefix}_{hashlib.blake2b(system.encode(), digest_size=3).hexdigest()}"
            self.prefixes[system] = prefix
            self.taken.add(prefix)
        return prefix

    def code(self, concept, field: str) -> tuple[str, str | None]:
        """(PREFIX//code, description) for a CodeableConcept (order in the module docstring)."""
        codings = [c for c in (getattr(concept, "coding", None) or []) if c.code]
        text = getattr(concept, "text", None)
        chosen = next((c for c in codings if (c.system or "") in self.known), None)
        chosen = chosen or next((c for c in codings if c.system), None) or next(iter(codings), None)
        if chosen is not None:
            return self.coding(chosen, text)
        if text and text.strip():
            self.text_only[field] += 1
            key = normalise_text(text)
            code = self.text_codes.get(key) or f"{TEXT_PREFIX}//{key}"
            self.used["(text only)" if code.startswith(f"{TEXT_PREFIX}//") else "(fhir.text_codes)"] += 1
            return code, text.strip()
        raise NoCode(field)

    def coding(self, coding, text: str | None = None) -> tuple[str, str | None]:
        """PREFIX//code for one Coding (a Coding-typed field such as ImagingStudy.modality)."""
        system = coding.system or ""
        prefix = self.prefix(system) if system else LOCAL_PREFIX
        self.used[system or "(no system)"] += 1
        return f"{prefix}//{coding.code}", coding.display or text

    def table(self) -> list[dict]:
        """The code systems seen, most used first: system, prefix, codes, configured."""
        rows = []
        for system, n in self.used.most_common():
            prefix = self.prefixes.get(system)
            if system == "(no system)":
                prefix = LOCAL_PREFIX
            elif system.startswith("("):
                prefix = TEXT_PREFIX if system == "(text only)" else "(configured)"
            rows.append({"system": system, "prefix": prefix, "codes": n, "configured": system in self.known})
        return rows
