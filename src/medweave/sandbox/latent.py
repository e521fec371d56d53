"""The shared latent model every modality and every outcome draws from.

Each synthetic person has demographics and latent causes:

    g_cvd, g_t1d  polygenic scores (standardised) of the person's simulated genotype
    m  metabolic burden            -> EHR: diagnoses, prescriptions, lab values, visit rate
    s  symptom burden              -> clinical notes: findings, negations, uncertainty
    l  structural (lesion) burden  -> chest X-ray and CT: size and density of a finding

A disease's liability is a weighted sum of these causes plus age and sex:

    liability_d = b_d + sum_f w_{d,f} x_f,   x = (g_cvd, g_t1d, m, s, l, (age - 60)/10, [male])
    P(onset of d within the horizon) = sigmoid(liability_d)

Each modality sees some causes (plus noise), so each alone is informative and only their fusion
approaches the oracle, whose score is the true probability itself. Diseases share some causes
(m, and pleiotropic genetic effects) and differ in others (see ``DEFAULT_DISEASES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The causes a disease may weigh, in the order of ``factors``.
FACTORS = ("genetic_cvd", "genetic_t1d", "metabolic", "symptoms", "structural", "age", "male")


@dataclass
class Disease:
    """One outcome: log-odds of onset within the horizon per unit of each cause in FACTORS."""

    code: str  # ICD-10 code recorded at onset (after prediction_time: a leakage trap)
    intercept: float
    weights: dict[str, float] = field(default_factory=dict)

    def liability(self, x: dict[str, float | np.ndarray], also: tuple[str, ...] = ()):
        """``also``: causes beyond FACTORS the caller's ``x`` holds (registry.py's diagnosed conditions)."""
        unknown = set(self.weights) - set(FACTORS) - set(also)
        if unknown:
            raise ValueError(f"unknown causes {sorted(unknown)}; expected some of {list(FACTORS)}")
        return self.intercept + sum(w * x[f] for f, w in self.weights.items())


def default_diseases() -> dict[str, Disease]:
    """A cardiovascular outcome (about 22 % within a year) and type 1 diabetes (about 7 %).

    Shared causes: metabolic burden and the pleiotropic small genetic effects. Distinct: CVD
    follows symptoms, structural burden, older age and male sex; T1D follows its own large-effect
    (HLA-like) variants and younger age. The numbers are chosen to make a learnable sandbox, not
    to match real incidence.
    """
    return {
        "cvd": Disease(
            "ICD10//I21",
            -1.9,
            {
                "genetic_cvd": 0.9,
                "metabolic": 0.9,
                "symptoms": 0.9,
                "structural": 0.9,
                "age": 0.25,
                "male": 0.2,
            },
        ),
        "t1d": Disease("ICD10//E10", -3.9, {"genetic_t1d": 1.3, "metabolic": 0.6, "age": -0.5}),
    }


@dataclass(frozen=True)
class Person:
    sex: str  # "F" or "M"
    birth: np.datetime64
    prediction_time: np.datetime64
    metabolic: float
    symptoms: float
    structural: float

    @property
    def age(self) -> float:
        return float((self.prediction_time - self.birth) / np.timedelta64(1, "D")) / 365.25


def draw_person(rng: np.random.Generator) -> Person:
    birth_day = rng.integers(0, 55 * 365) + np.datetime64("1940-01-01", "D")
    prediction_day = np.datetime64("2021-01-01", "D") + rng.integers(0, 365)
    return Person(
        sex="M" if rng.random() < 0.5 else "F",
        birth=birth_day.astype("datetime64[s]") + rng.integers(0, 86400),
        prediction_time=prediction_day.astype("datetime64[s]") + np.timedelta64(12, "h"),
        metabolic=float(rng.standard_normal()),
        symptoms=float(rng.standard_normal()),
        structural=float(rng.standard_normal()),
    )


def factors(person: Person, genetic: dict[str, float]) -> dict[str, float]:
    """The person's causes, keyed as in FACTORS (age in decades from 60, male as 0/1)."""
    return {
        "genetic_cvd": genetic["cvd"],
        "genetic_t1d": genetic["t1d"],
        "metabolic": person.metabolic,
        "symptoms": person.symptoms,
        "structural": person.structural,
        "age": (person.age - 60.0) / 10.0,
        "male": float(person.sex == "M"),
    }


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
