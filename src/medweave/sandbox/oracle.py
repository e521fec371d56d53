"""What each modality can carry: the best possible score given one modality's latent factor.

A model that sees only one modality can at best learn P(onset | that modality's factor), with the
other factors unknown, averaged out here by Gauss-Hermite quadrature. This is approximate: hidden
factors are treated as Gaussian (the genetic score is a sum over a few large-effect variants; age
and sex are folded in by their variance). Among subjects who have the modality the score is
monotone in the factor, so that part of the AUROC is exact; subjects without it get the cohort's
mean risk. EHR also shows age and sex (birth and sex events), so its oracle uses them; images,
notes and genomes do not. Note counts follow visit rate, so the text ceiling is not strict.
"""

from __future__ import annotations

import numpy as np

from medweave.sandbox.latent import LatentWeights, sigmoid

FACTOR_OF = {"ehr_codes": "metabolic", "text": "symptoms", "image": "structural", "genomics": "genetic"}
WEIGHT_OF = {
    "metabolic": "metabolic",
    "symptoms": "symptoms",
    "structural": "structural",
    "genetic": "genetic",
}


def _expected_sigmoid(mean: np.ndarray, sd: float, nodes: int = 40) -> np.ndarray:
    """E[sigmoid(mean + sd * Z)], Z ~ N(0, 1)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    return (sigmoid(mean[:, None] + sd * x[None, :]) * w).sum(1) / w.sum()


def modality_oracle_scores(truth: dict[str, np.ndarray], weights: LatentWeights) -> dict[str, np.ndarray]:
    """Per modality, each subject's P(onset | what that modality shows); ``truth`` holds the factors,
    risk, age, male and has_<modality> arrays."""
    demo = weights.age_per_decade * (truth["age"] - 60.0) / 10.0 + weights.male * truth["male"]
    factors = {f: getattr(weights, WEIGHT_OF[f]) for f in WEIGHT_OF}
    scores = {}
    for modality, factor in FACTOR_OF.items():
        hidden = [w for f, w in factors.items() if f != factor]
        mean = weights.intercept + factors[factor] * truth[factor]
        if modality == "ehr_codes":
            mean = mean + demo
            sd = float(np.sqrt(sum(w**2 for w in hidden)))
        else:  # age and sex are unseen too: fold their spread into the unknown part
            mean = mean + demo.mean()
            sd = float(np.sqrt(sum(w**2 for w in hidden) + demo.var()))
        score = _expected_sigmoid(mean, sd)
        has = truth.get(f"has_{modality}", np.ones(len(score), bool))
        scores[modality] = np.where(has, score, truth["risk"].mean())
    return scores
