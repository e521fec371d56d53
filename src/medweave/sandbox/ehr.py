"""Registry-style EHR events as Danish registries record them: ICD-10, ATC, NPU labs.

The metabolic factor m raises the visit rate (informative missingness), the chance of metabolic
diagnoses and their prescriptions, and lab values. Events continue after prediction_time (with
each outcome's diagnosis at its onset) so that a pipeline that leaks future events is caught.
"""

from __future__ import annotations

import numpy as np

from medweave.sandbox.latent import Person, sigmoid

DAY = np.timedelta64(1, "D")

# code -> description; parent_codes give the ICD-10 chapter or ATC group.
CODES = {
    "ICD10//E11": ("Type 2 diabetes mellitus", ["ICD10//E10-E14"]),
    "ICD10//I10": ("Essential hypertension", ["ICD10//I10-I15"]),
    "ICD10//E78": ("Disorders of lipoprotein metabolism", ["ICD10//E70-E90"]),
    "ICD10//E66": ("Obesity", ["ICD10//E65-E68"]),
    "ICD10//J06": ("Acute upper respiratory infection", ["ICD10//J00-J06"]),
    "ICD10//M54": ("Dorsalgia", ["ICD10//M50-M54"]),
    "ICD10//K21": ("Gastro-oesophageal reflux disease", ["ICD10//K20-K31"]),
    "ICD10//R51": ("Headache", ["ICD10//R50-R69"]),
    "ICD10//Z00": ("General examination", ["ICD10//Z00-Z13"]),
    "ICD10//I21": ("Acute myocardial infarction", ["ICD10//I20-I25"]),
    "ICD10//E10": ("Type 1 diabetes mellitus", ["ICD10//E10-E14"]),
    "ATC//A10BA02": ("Metformin", ["ATC//A10B"]),
    "ATC//C09AA05": ("Ramipril", ["ATC//C09A"]),
    "ATC//C10AA01": ("Simvastatin", ["ATC//C10A"]),
    "ATC//N02BE01": ("Paracetamol", ["ATC//N02B"]),
    "ATC//M01AE01": ("Ibuprofen", ["ATC//M01A"]),
    "NPU//NPU27300": ("Haemoglobin A1c (IFCC), mmol/mol", ["NPU"]),
    "NPU//NPU01568": ("LDL cholesterol, mmol/L", ["NPU"]),
    "NPU//NPU18016": ("Creatinine, umol/L", ["NPU"]),
    "MEDS_BIRTH": ("Birth", []),
    "SANDBOX//INDEX": ("Index visit: the prediction time the sandbox's labels start from", []),
    "STATUS//LOST_TO_FOLLOW_UP": ("Lost to follow-up (emigration or death from another cause)", []),
    "SEX//F": ("Sex: female", []),
    "SEX//M": ("Sex: male", []),
}
# Metabolic diagnoses: (code, intercept, slope in m, prescription that follows it)
METABOLIC = [
    ("ICD10//E11", -2.2, 1.4, "ATC//A10BA02"),
    ("ICD10//I10", -1.2, 1.1, "ATC//C09AA05"),
    ("ICD10//E78", -1.6, 1.1, "ATC//C10AA01"),
    ("ICD10//E66", -2.0, 0.9, None),
]
HBA1C = "NPU//NPU27300"
# The event an ACES task triggers on (configs/aces/), and the end of follow-up before the data
# cutoff; both at or after prediction_time, so no model ever sees them.
INDEX, LOST = "SANDBOX//INDEX", "STATUS//LOST_TO_FOLLOW_UP"
BACKGROUND = ["ICD10//J06", "ICD10//M54", "ICD10//K21", "ICD10//R51", "ICD10//Z00"]
BACKGROUND_DRUGS = ["ATC//N02BE01", "ATC//M01AE01"]


def visit_times(person: Person, rng: np.random.Generator, follow_up_days: int) -> np.ndarray:
    """Visit times from up to six years before prediction_time to the end of follow-up."""
    adult = person.birth + np.timedelta64(18 * 365, "D")
    start = max(person.prediction_time - np.timedelta64(6 * 365, "D"), adult)
    end = person.prediction_time + np.timedelta64(follow_up_days, "D")
    years = max(float((end - start) / DAY) / 365.25, 0.0)
    rate = np.exp(0.2 + 0.45 * person.metabolic + 0.15 * (person.age - 60) / 10)
    n = rng.poisson(rate * years)
    offsets = np.sort(rng.uniform(0, years * 365.25 * 86400, n)).astype("timedelta64[s]")
    return start.astype("datetime64[s]") + offsets


def draw_events(person: Person, visits: np.ndarray, onsets, rng: np.random.Generator) -> list[tuple]:
    """(time, code, numeric_value, text_value) tuples for one person; ``onsets`` holds the
    (time, code) of each disease onset seen in follow-up."""
    events: list[tuple] = [(None, f"SEX//{person.sex}", None), (person.birth, "MEDS_BIRTH", None)]
    m = person.metabolic
    chance = {code: sigmoid(a + b * m) for code, a, b, _ in METABOLIC}
    for t in visits:
        for code, _, _, drug in METABOLIC:
            if rng.random() < chance[code]:
                events.append((t, code, None))
                if drug and rng.random() < 0.8:
                    events.append((t + np.timedelta64(rng.integers(0, 3), "D"), drug, None))
        for code in rng.choice(BACKGROUND, size=rng.integers(0, 3), replace=False):
            events.append((t, str(code), None))
        if rng.random() < 0.3:
            events.append((t, str(rng.choice(BACKGROUND_DRUGS)), None))
        if rng.random() < 0.6:
            events.append((t, HBA1C, 38 + 6.0 * m + rng.normal(0, 4)))
            events.append((t, "NPU//NPU01568", 2.9 + 0.5 * m + rng.normal(0, 0.6)))
            age = float((t - person.birth) / DAY) / 365.25
            events.append((t, "NPU//NPU18016", 80 + 8 * (age - 60) / 10 + rng.normal(0, 12)))
    events += [(t, code, None) for t, code in onsets]
    return [(*event, None) for event in events]
