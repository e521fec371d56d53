"""The shared latent model every modality draws from.

Each synthetic person has four independent latent factors and demographics:

    g  polygenic score (standardised), computed from the person's simulated genotype
    m  metabolic burden            -> EHR: diagnoses, prescriptions, lab values, visit rate
    s  symptom burden              -> clinical notes: findings, negations, uncertainty
    l  structural (lesion) burden  -> chest X-ray: size and contrast of a finding

    liability = b0 + w_g g + w_m m + w_s s + w_l l + w_age (age - 60) / 10 + w_sex [male]
    P(onset within horizon) = sigmoid(liability)

Each modality sees one factor (plus noise), so each alone is informative and only their fusion
approaches the oracle, whose score is the true probability itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatentWeights:
    """Log-odds weights of the onset model; defaults give a prevalence of about 20-25 %."""

    intercept: float = -1.9
    genetic: float = 0.9
    metabolic: float = 0.9
    symptoms: float = 0.9
    structural: float = 0.9
    age_per_decade: float = 0.25
    male: float = 0.2


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


def onset_logit(person: Person, genetic: float, w: LatentWeights) -> float:
    return (
        w.intercept
        + w.genetic * genetic
        + w.metabolic * person.metabolic
        + w.symptoms * person.symptoms
        + w.structural * person.structural
        + w.age_per_decade * (person.age - 60.0) / 10.0
        + w.male * (person.sex == "M")
    )


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))
