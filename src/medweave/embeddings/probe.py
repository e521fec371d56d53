"""A linear probe: L2-regularised logistic regression on frozen embeddings (medweave-embed's).

How much of a binary task a pretrained representation holds, with nothing learnt but one linear
map: fitted on train, the strength chosen by tuning AUROC, scored on held_out. Rows of the
embedding cache are the prepared cache's rows (data/embedding_cache.py, checked by ``open_cache``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data.embedding_cache import open_cache
from medweave.errors import MedweaveError

STRENGTHS = (0.001, 0.01, 0.1, 1.0, 10.0)  # logistic C (inverse L2 strength) tried


def fit_probe(x_train, y_train, x_tune, y_tune, strengths=STRENGTHS, offsets=None):
    """(predict: x -> decision scores, {"C", "tuning_auroc"}): standardised on train, logistic
    regression for each C, the best tuning AUROC kept (the strongest penalty on a tie, as with
    the few subjects of a few-shot draw ties are common).

    ``offsets`` (train, tune): a fixed logit each subject's decision adds to (a pretrained
    model's zero-shot prediction); then ``predict(x, offset)``. The strongest penalty leaves the
    offset's ranking, so the tuning subjects must favour what the few labels add to it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(x_train)
    a, b = scale.transform(x_train), scale.transform(x_tune)
    best = None
    for strength in strengths:
        if offsets is None:
            model = LogisticRegression(C=strength, max_iter=2000).fit(a, y_train)
            auroc = roc_auc_score(y_tune, model.decision_function(b))
        else:
            model = OffsetLogistic(strength).fit(a, y_train, offsets[0])
            auroc = roc_auc_score(y_tune, model.decision_function(b, offsets[1]))
        if best is None or auroc > best[0]:
            best = (auroc, strength, model)
    auroc, strength, model = best
    return (lambda x, *offset: model.decision_function(scale.transform(x), *offset)), {
        "C": strength,
        "tuning_auroc": float(auroc),
    }


class OffsetLogistic:
    """L2 logistic regression with a fixed offset in the logit, scikit-learn's objective
    (1/2 |w|^2 + C sum log-loss, the intercept unpenalised), by L-BFGS. scikit-learn's
    LogisticRegression takes no offset."""

    def __init__(self, C: float):
        self.C = C

    def fit(self, x: np.ndarray, y: np.ndarray, offset: np.ndarray) -> OffsetLogistic:
        from scipy.optimize import minimize

        sign = 2.0 * np.asarray(y, np.float64) - 1.0

        def objective(theta):
            w, b = theta[:-1], theta[-1]
            margin = sign * (x @ w + b + offset)
            loss = np.logaddexp(0.0, -margin)
            g = -sign / (1.0 + np.exp(margin))  # d loss / d logit
            grad = np.append(w + self.C * (x.T @ g), self.C * g.sum())
            return 0.5 * w @ w + self.C * loss.sum(), grad

        theta = minimize(objective, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B").x
        self.coef_, self.intercept_ = theta[:-1], theta[-1]
        return self

    def decision_function(self, x: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return x @ self.coef_ + self.intercept_ + offset


def linear_probe(embeddings: Path, prepared: Path, root: Path, modality: str = "ehr_codes") -> dict:
    """{"C", "tuning_auroc", "held_out_auroc", "n_train"} for the prepared cache's binary task."""
    from sklearn.metrics import roc_auc_score

    cache = open_cache(embeddings, modality, Path(prepared), Path(root))
    subjects = np.load(Path(prepared) / "subjects.npz")
    split, target = subjects["split"], subjects["target"]
    x = np.asarray(cache.vectors, np.float64)
    rows = {s: np.flatnonzero((split == c.SPLITS.index(s)) & cache.present) for s in c.SPLITS}
    y = {s: target[r] for s, r in rows.items()}
    for s in c.SPLITS:
        if len(np.unique(y[s])) < 2:
            raise MedweaveError(
                f"linear probe: the {s} split needs both classes; it has {len(y[s])} subject(s)"
            )
    predict, chosen = fit_probe(
        x[rows[c.TRAIN_SPLIT]], y[c.TRAIN_SPLIT], x[rows[c.TUNING_SPLIT]], y[c.TUNING_SPLIT]
    )
    strength, auroc = chosen["C"], chosen["tuning_auroc"]
    return {
        "C": strength,
        "tuning_auroc": round(float(auroc), 4),
        "held_out_auroc": round(
            float(roc_auc_score(y[c.HELD_OUT_SPLIT], predict(x[rows[c.HELD_OUT_SPLIT]]))), 4
        ),
        "n_train": int(len(rows[c.TRAIN_SPLIT])),
    }
