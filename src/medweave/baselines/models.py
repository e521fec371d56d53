"""The tabular baselines every comparison runs beside the neural arms (configs/baseline/).

Both take the count features (features.py) of the train split, choose what they must on the
tuning split (boosting rounds by early stopping; the L2 penalty of the linear models by the tuning
split's AUROC or C-index), and score subjects as the neural heads do: a probability for binary
tasks, a log hazard ratio for survival (the report fits Breslow's baseline on train from it).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import sparse

from medweave.errors import MedweaveError

log = logging.getLogger("medweave")

KINDS = ("binary", "survival")


def check_kind(kind: str, model: str) -> None:
    if kind not in KINDS:
        raise MedweaveError(
            f"baseline={model}: task.type={kind} is not supported; expected one of {list(KINDS)}"
        )


def tuning_score(kind: str, y: np.ndarray, score: np.ndarray, time: np.ndarray | None) -> float:
    """AUROC (binary) or Harrell's C-index (survival) on the tuning split: what selects."""
    if kind == "binary":
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y.astype(int), score)) if 0 < y.sum() < len(y) else float("nan")
    from sksurv.metrics import concordance_index_censored

    if not y.any():
        return float("nan")
    return float(concordance_index_censored(y.astype(bool), time, score)[0])


class GradientBoosting:
    """XGBoost (the learner of meds-tab) on the sparse counts: ``binary:logistic`` or
    ``survival:cox``; absent entries are missing to the trees, which for a count means zero.

    Args:
        learning_rate: shrinkage per round.
        max_depth: depth of each tree.
        max_rounds: boosting rounds at most; early stopping on the tuning split picks fewer.
        early_stopping_rounds: rounds without improvement of the tuning loss before stopping.
        min_child_weight: smallest hessian sum in a leaf (regularises small cohorts).
        subsample: share of train subjects drawn for each tree.
        colsample_bytree: share of features drawn for each tree.
        reg_lambda: L2 penalty on leaf weights.
        threads: CPU threads (0: all).
        seed: the draws of subsample and colsample.
    """

    name = "gbm"

    def __init__(
        self,
        learning_rate: float = 0.05,
        max_depth: int = 4,
        max_rounds: int = 2000,
        early_stopping_rounds: int = 50,
        min_child_weight: float = 1.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        threads: int = 0,
        seed: int = 0,
    ):
        self.params = {
            "eta": learning_rate,
            "max_depth": max_depth,
            "min_child_weight": min_child_weight,
            "subsample": subsample,
            "colsample_bytree": colsample_bytree,
            "lambda": reg_lambda,
            "tree_method": "hist",
            "seed": seed,
            "nthread": threads,
            "verbosity": 0,
        }
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.booster = None

    @staticmethod
    def _label(kind: str, y: np.ndarray, time: np.ndarray | None) -> np.ndarray:
        if kind == "binary":
            return y.astype(np.float32)
        # survival:cox reads the label's sign: positive = event at that time, negative = censored.
        t = np.maximum(time.astype(np.float64), 1e-3)  # an event on day 0 must stay positive
        return np.where(y.astype(bool), t, -t)

    def fit(self, kind, x_train, y_train, x_tune, y_tune, t_train=None, t_tune=None, is_value=None) -> dict:
        import xgboost as xgb

        check_kind(kind, self.name)
        self.kind = kind
        train = xgb.DMatrix(x_train, label=self._label(kind, y_train, t_train), missing=np.nan)
        tune = xgb.DMatrix(x_tune, label=self._label(kind, y_tune, t_tune), missing=np.nan)
        objective = {"binary": ("binary:logistic", "logloss"), "survival": ("survival:cox", "cox-nloglik")}
        params = {**self.params, "objective": objective[kind][0], "eval_metric": objective[kind][1]}
        self.booster = xgb.train(
            params,
            train,
            num_boost_round=self.max_rounds,
            evals=[(tune, "tuning")],
            early_stopping_rounds=self.early_stopping_rounds,
            verbose_eval=False,
        )
        rounds = int(self.booster.best_iteration) + 1
        log.info("GBM: %d boosting round(s) chosen on the tuning split", rounds)
        return {"rounds": rounds}

    def predict(self, x) -> np.ndarray:
        import xgboost as xgb

        rounds = (0, int(self.booster.best_iteration) + 1)
        data = xgb.DMatrix(x, missing=np.nan)
        # Cox: the margin is the log hazard ratio (predict's default is its exponential).
        return self.booster.predict(data, iteration_range=rounds, output_margin=self.kind == "survival")


class Linear:
    """Logistic regression (binary, scikit-learn) or Cox regression (survival, scikit-survival's
    Breslow partial likelihood), L2-penalised, the penalty chosen on the tuning split.

    Features are put on one scale first, with train's statistics: counts as log(1 + count)
    divided by train's largest; values and age as z-scores, a missing one at 0 (train's mean).

    Args:
        penalties: L2 strengths tried, per train subject (logistic C = 1 / (penalty * n)).
        max_iter: solver iterations.
        max_dense_cells: Cox regression needs a dense matrix; a larger train split x features
            is refused (use baseline=gbm, or fewer codes via data.min_subjects).
    """

    name = "linear"

    def __init__(
        self,
        penalties: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
        max_iter: int = 1000,
        max_dense_cells: float = 2e8,
    ):
        self.penalties = list(penalties)
        self.max_iter = max_iter
        self.max_dense_cells = max_dense_cells

    def _fit_scale(self, x: sparse.csr_matrix, is_value: np.ndarray) -> None:
        x = x.tocsc()
        n_cols = x.shape[1]
        col = np.repeat(np.arange(n_cols), np.diff(x.indptr))
        data = x.data.astype(np.float64)
        stored = np.maximum(np.bincount(col, minlength=n_cols), 1)
        mean = np.bincount(col, data, n_cols) / stored
        sd = np.sqrt(np.maximum(np.bincount(col, data**2, n_cols) / stored - mean**2, 0))
        largest = np.zeros(n_cols)
        np.maximum.at(largest, col, data)
        self.mean = np.where(is_value, mean, 0.0)
        scale = np.where(is_value, sd, np.log1p(np.maximum(largest, 0)))
        self.scale = np.where(scale > 0, scale, 1.0)

    def _scaled(self, x: sparse.csr_matrix) -> sparse.csr_matrix:
        x = sparse.csr_matrix(x, dtype=np.float64, copy=True)
        col = x.indices
        value = self.is_value[col]
        data = x.data
        x.data = np.where(value, data - self.mean[col], np.log1p(np.maximum(data, 0))) / self.scale[col]
        return x

    def fit(self, kind, x_train, y_train, x_tune, y_tune, t_train=None, t_tune=None, is_value=None) -> dict:
        check_kind(kind, self.name)
        self.kind = kind
        self.is_value = np.zeros(x_train.shape[1], bool) if is_value is None else np.asarray(is_value)
        self._fit_scale(x_train, self.is_value)
        a, b = self._scaled(x_train), self._scaled(x_tune)
        n = a.shape[0]
        if kind == "survival" and a.shape[0] * a.shape[1] > self.max_dense_cells:
            raise MedweaveError(
                f"baseline=linear (Cox): {a.shape[0]} train subjects x {a.shape[1]} features is more than "
                f"baseline.model.max_dense_cells={self.max_dense_cells:g}; use baseline=gbm, or fewer codes "
                "(data.min_subjects)"
            )
        tried = {}
        for penalty in self.penalties:
            model = self._new(kind, penalty, n)
            if kind == "binary":
                model.fit(a, y_train.astype(int))
                score = model.predict_proba(b)[:, 1]
            else:
                model.fit(a.toarray(), _surv(y_train, t_train))
                score = model.predict(b.toarray())
            tried[penalty] = (tuning_score(kind, y_tune, score, t_tune), model)
        best = max(tried, key=lambda k: -np.inf if np.isnan(tried[k][0]) else tried[k][0])
        self.model = tried[best][1]
        log.info(
            "linear: L2 penalty %g chosen on the tuning split (%s)",
            best,
            ", ".join(f"{k:g}: {v[0]:.4f}" for k, v in tried.items()),
        )
        return {"penalty": best, "tuning": {str(k): v[0] for k, v in tried.items()}}

    def _new(self, kind: str, penalty: float, n: int):
        if kind == "binary":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=1.0 / (penalty * n), max_iter=self.max_iter)
        from sksurv.linear_model import CoxPHSurvivalAnalysis

        return CoxPHSurvivalAnalysis(alpha=penalty * n, ties="breslow", n_iter=self.max_iter)

    def predict(self, x) -> np.ndarray:
        a = self._scaled(x)
        if self.kind == "binary":
            return self.model.predict_proba(a)[:, 1]
        return self.model.predict(a.toarray())  # the linear predictor: log hazard ratio


def _surv(event: np.ndarray, time: np.ndarray):
    from sksurv.util import Surv

    return Surv.from_arrays(event.astype(bool), time.astype(np.float64))
