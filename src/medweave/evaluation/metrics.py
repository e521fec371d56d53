"""Test-set metrics, each computed by the library that defines it (scikit-learn,
scikit-survival); only the expected calibration error is ours, checked against torchmetrics."""

from __future__ import annotations

import numpy as np


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Sum over equal-width probability bins [k/n, (k+1)/n) of |bin share| * |observed rate -
    mean prediction| (as torchmetrics bins them)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    which = np.clip(np.floor(p * n_bins).astype(int), 0, n_bins - 1)
    total = 0.0
    for k in np.unique(which):
        sel = which == k
        total += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(total)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y).astype(int)
    out = {"brier": brier_score_loss(y, p, pos_label=1), "ece": expected_calibration_error(y, p)}
    if y.min() == y.max():  # one class only (a small subgroup): ranking metrics are undefined
        return {"auroc": np.nan, "auprc": np.nan, **out}
    return {"auroc": roc_auc_score(y, p), "auprc": average_precision_score(y, p), **out}


def multiclass_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Macro one-vs-rest AUROC and accuracy; y holds class indices, p [n, K] probabilities."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    y = np.asarray(y).astype(int)
    try:
        auroc = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=np.arange(p.shape[1]))
    except ValueError:  # a class missing from this sample
        auroc = np.nan
    return {"auroc": auroc, "accuracy": accuracy_score(y, p.argmax(1))}


def multilabel_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Macro AUROC and AUPRC over labels; y and p are [n, K]."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y).astype(int)
    defined = y.min(0) != y.max(0)  # labels with both classes in this sample: the macro mean's terms
    if not defined.any():
        return {"auroc": np.nan, "auprc": np.nan}
    y, p = y[:, defined], np.asarray(p)[:, defined]
    return {
        "auroc": roc_auc_score(y, p, average="macro"),
        "auprc": average_precision_score(y, p, average="macro"),
    }


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    return {"r2": r2_score(y, p), "mae": mean_absolute_error(y, p), "rmse": root_mean_squared_error(y, p)}


def _surv(event, time):
    from sksurv.util import Surv

    return Surv.from_arrays(np.asarray(event, bool), np.asarray(time, float))


def evaluation_times(time: np.ndarray, event: np.ndarray, train_time: np.ndarray) -> np.ndarray:
    """Times for time-dependent AUC and the Brier score: the 10th to 80th percentiles of event
    times, inside both the test and the training follow-up (IPCW needs the censoring law there)."""
    if not np.any(event):
        return np.array([])
    times = np.percentile(time[event], np.linspace(10, 80, 8))
    limit = min(time.max(), train_time.max())
    return np.unique(times[(times > time.min()) & (times < limit)])


def survival_scores(
    time: np.ndarray,
    event: np.ndarray,
    score: np.ndarray,
    train: tuple[np.ndarray, np.ndarray],
    times: np.ndarray,
    survival_at: np.ndarray | None = None,
) -> dict[str, float]:
    """Harrell's and Uno's (IPCW) C-index, mean time-dependent AUC over ``times`` and, when
    survival probabilities at ``times`` are given [n, len(times)], the integrated Brier score.
    ``train`` = (times, events) of the training split: the censoring distribution for IPCW.
    ``times`` are cut to this sample's follow-up (a bootstrap resample or a subgroup may end
    earlier); each metric is NaN on its own when it cannot be computed."""
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score

    from medweave.metrics.survival import harrell_c

    event, time = np.asarray(event, bool), np.asarray(time, float)
    out = {"c_index": harrell_c(event, time, score), "c_index_uno": np.nan, "td_auc": np.nan, "ibs": np.nan}
    keep = (times > time.min()) & (times < time.max()) if len(time) else np.zeros(len(times), bool)
    if not event.any() or not keep.any():
        return out
    test, train_y, inside = _surv(event, time), _surv(train[1], train[0]), times[keep]
    attempts = {
        "c_index_uno": lambda: concordance_index_ipcw(train_y, test, score, tau=inside[-1])[0],
        "td_auc": lambda: cumulative_dynamic_auc(train_y, test, score, inside)[1],
    }
    if survival_at is not None and keep.sum() >= 2:
        attempts["ibs"] = lambda: integrated_brier_score(train_y, test, survival_at[:, keep], inside)
    for name, compute in attempts.items():
        try:
            out[name] = float(compute())
        except ValueError:  # outside the censoring law's support, or no comparable pair
            pass
    return out


def breslow_survival(train_score, train_time, train_event, score, times) -> np.ndarray:
    """S(t | x) = S0(t) ** exp(score) with Breslow's baseline from the training split, for a Cox
    model whose score is the log hazard ratio; [n, len(times)]. Tied event times share one jump,
    d_j / sum of risk over those still at risk."""
    shift = float(np.max(train_score))
    risk = np.exp(np.asarray(train_score, float) - shift)
    order = np.argsort(train_time)
    t, r = np.asarray(train_time, float)[order], risk[order]
    at_risk_from = np.cumsum(r[::-1])[::-1]  # sum of risk over sorted positions >= i
    event_times, deaths = np.unique(np.asarray(train_time)[np.asarray(train_event, bool)], return_counts=True)
    jumps = deaths / at_risk_from[np.searchsorted(t, event_times, side="left")]
    cumulative = np.concatenate([[0.0], np.cumsum(jumps)])
    baseline = cumulative[np.searchsorted(event_times, times, side="right")]
    return np.exp(-baseline[None, :] * np.exp(np.asarray(score, float) - shift)[:, None])
