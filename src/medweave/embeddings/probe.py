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


def fit_probe(x_train, y_train, x_tune, y_tune, strengths=STRENGTHS):
    """(predict: x -> decision scores, {"C", "tuning_auroc"}): standardised on train, logistic
    regression for each C, the best tuning AUROC kept (the strongest penalty on a tie, as with
    the few subjects of a few-shot draw ties are common)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(x_train)
    a, b = scale.transform(x_train), scale.transform(x_tune)
    best = None
    for strength in strengths:
        model = LogisticRegression(C=strength, max_iter=2000).fit(a, y_train)
        auroc = roc_auc_score(y_tune, model.decision_function(b))
        if best is None or auroc > best[0]:
            best = (auroc, strength, model)
    auroc, strength, model = best
    return (lambda x: model.decision_function(scale.transform(x))), {
        "C": strength,
        "tuning_auroc": float(auroc),
    }


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
