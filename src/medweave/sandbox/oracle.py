"""The best possible scores: the true risk, the best score given the modalities each subject has,
and the best score given one modality alone.

A model that sees only one modality can at best learn P(onset | the causes that modality shows),
with the other causes unknown. Here those are integrated out by Gauss-Hermite quadrature, treating
each hidden cause as Gaussian with its cohort mean and variance (exact for m, s and l; approximate
for the genetic scores, age and sex). Among subjects who have the modality the score is monotone
in what the modality shows, so that part of the ranking is exact; subjects without it get the
score that knows nothing. Note counts follow visit rate, so the text ceiling is not strict.

The same scores rank survival: hazard is monotone in horizon risk, so the oracle C-index uses them.
"""

from __future__ import annotations

import numpy as np

from medweave.data import contract as c
from medweave.metrics.survival import harrell_c
from medweave.sandbox.comorbidity import DIAGNOSED
from medweave.sandbox.latent import FACTORS, Disease, sigmoid

# The causes each modality shows. EHR shows age and sex through birth and sex events, and in a
# registry cohort with comorbidity the conditions diagnosed by the prediction time (comorbidity.py).
SEEN_BY = {
    c.EHR_CODES: ("metabolic", "age", "male", *DIAGNOSED),
    c.TEXT: ("symptoms",),
    c.IMAGE: ("structural",),
    c.GENOMICS: ("genetic_cvd", "genetic_t1d"),
}


def _expected_sigmoid(mean: np.ndarray, sd: float, nodes: int = 40, rows: int = 65_536) -> np.ndarray:
    """E[sigmoid(mean + sd * Z)], Z ~ N(0, 1), ``rows`` subjects at a time (a [rows, nodes] array
    each: a million-subject cohort's oracle would otherwise hold a gigabyte of temporaries)."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    out = np.empty(len(mean))
    for r in range(0, len(mean), rows):
        out[r : r + rows] = (sigmoid(mean[r : r + rows, None] + sd * x[None, :]) * w).sum(1) / w.sum()
    return out


def _given(truth: dict[str, np.ndarray], disease: Disease, seen: tuple[str, ...]) -> np.ndarray:
    """Each subject's P(onset | the causes in ``seen``), the other causes integrated out."""
    n = len(truth["metabolic"])
    mean, var = np.full(n, disease.intercept), 0.0
    for f, w in disease.weights.items():
        x = np.asarray(truth[f], float)
        if f in seen:
            mean = mean + w * x
        else:
            mean, var = mean + w * x.mean(), var + w**2 * x.var()
    return _expected_sigmoid(mean, float(np.sqrt(var)))


def modality_oracle_scores(truth: dict[str, np.ndarray], disease: Disease) -> dict:
    """Per modality, each subject's P(onset | what that modality shows). ``truth`` holds one array
    per cause in FACTORS and has_<modality>."""
    nothing = _given(truth, disease, ())  # a subject without the modality: only the cohort is known
    scores = {}
    for modality, seen in SEEN_BY.items():
        has = truth.get(f"has_{modality}", np.ones(len(nothing), bool))
        scores[modality] = np.where(has, _given(truth, disease, seen), nothing)
    return scores


def available_oracle_score(truth: dict[str, np.ndarray], disease: Disease) -> np.ndarray:
    """Each subject's P(onset | what all the modalities they have show): the ceiling for a model
    that fuses every modality, given who misses which (the true risk also knows the missing)."""
    has = np.stack([truth.get(f"has_{m}", np.ones(len(truth["metabolic"]), bool)) for m in SEEN_BY], 1)
    score = np.empty(len(has))
    for pattern in np.unique(has, axis=0):
        rows = (has == pattern).all(1)
        seen = tuple(f for m, present in zip(SEEN_BY, pattern, strict=True) if present for f in SEEN_BY[m])
        score[rows] = _given(truth, disease, seen)[rows]
    return score


# Harrell's C (scikit-survival) costs O(n x events): past this many subjects a split's C-index is
# taken on its first this many (in subject order, a random sample), so a million-subject cohort's
# oracle takes seconds, not hours. Smaller splits are scored whole.
C_INDEX_SUBJECTS = 20_000


def _by_split(splits: np.ndarray, metric, *arrays, cap: int | None = None) -> dict:
    out = {}
    for split in c.SPLITS:
        sel = splits == split
        if cap is not None and sel.sum() > cap:
            sel = sel & (np.cumsum(sel) <= cap)
        value = metric(*(a[sel] for a in arrays)) if sel.any() else None
        if value is not None:
            out[split] = round(float(value), 4)
    return out


def _auroc(y, score):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, score) if 0 < y.sum() < len(y) else None


def _harrell_c(event, time, score):
    value = harrell_c(event, time, score)
    return None if np.isnan(value) else value


def oracle_report(
    truth: dict[str, np.ndarray],
    disease: Disease,
    risk: np.ndarray,
    splits: np.ndarray,
    onset: np.ndarray,
    tte: tuple,
) -> dict:
    """AUROC of the binary task and Harrell's C-index of the survival task, per split, for the
    true risk and for each modality alone. ``tte`` is (days, event observed)."""
    missing = set(FACTORS) - set(truth)
    if missing:
        raise ValueError(f"truth lacks causes {sorted(missing)}")
    by_modality = modality_oracle_scores(truth, disease)
    available = available_oracle_score(truth, disease)
    days, event = (np.asarray(a) for a in tte)
    return {
        "auroc": _by_split(splits, _auroc, onset, risk),
        "auroc_given_available": _by_split(splits, _auroc, onset, available),
        "auroc_by_modality": {m: _by_split(splits, _auroc, onset, s) for m, s in by_modality.items()},
        "c_index": _by_split(splits, _harrell_c, event, days, risk, cap=C_INDEX_SUBJECTS),
        "c_index_given_available": _by_split(
            splits, _harrell_c, event, days, available, cap=C_INDEX_SUBJECTS
        ),
        "c_index_by_modality": {
            m: _by_split(splits, _harrell_c, event, days, s, cap=C_INDEX_SUBJECTS)
            for m, s in by_modality.items()
        },
        "prevalence": round(float(np.mean(onset)), 4),
        "event_rate": round(float(np.mean(event)), 4),
        "median_follow_up_days": round(float(np.median(days)), 1),
    }
