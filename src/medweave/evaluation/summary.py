"""Everything the report shows, as one JSON-able dict: overall metrics with bootstrap CIs, the
same by subgroup and by modality-availability pattern, and the cohort's modality attribution.
Only aggregates: groups smaller than ``min_group_size`` show neither their exact size nor metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medweave.evaluation import metrics as M
from medweave.evaluation import resampled
from medweave.evaluation.bootstrap import with_ci


@dataclass
class Predictions:
    """One split's per-subject outputs (no IDs needed here)."""

    score: np.ndarray  # [n], or [n, K] for multiclass and multilabel
    target: np.ndarray  # label, event seen (survival), value (regression), class index, or [n, K]
    time: np.ndarray | None = None  # survival: days to event or censoring
    survival: np.ndarray | None = None  # survival: S(t) at ``survival_times`` [n, T]
    survival_times: np.ndarray | None = None

    def rows(self, idx: np.ndarray) -> Predictions:
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Predictions(
            pick(self.score), pick(self.target), pick(self.time), pick(self.survival), self.survival_times
        )


def metric_fn(kind: str, preds: Predictions, train: tuple | None, times: np.ndarray | None):
    """rows -> {metric: value} for this task kind."""
    simple = {
        "binary": M.binary_metrics,
        "multiclass": M.multiclass_metrics,
        "multilabel": M.multilabel_metrics,
        "regression": M.regression_metrics,
    }
    if kind in simple:
        return lambda idx: simple[kind](preds.target[idx], preds.score[idx])

    def survival(idx):
        curve = None if preds.survival is None else preds.survival[idx]
        return M.survival_scores(
            preds.time[idx], preds.target[idx].astype(bool), preds.score[idx], train, times, curve
        )

    return survival


def weighted_fn(kind: str, preds: Predictions):
    """W [B, n] -> {metric: [B]}: every bootstrap resample at once (resampled.py), for the kinds
    that have it; survival metrics (scikit-survival's IPCW estimators) run per resample."""
    fn = resampled.KINDS.get(kind)
    return None if fn is None else (lambda W: fn(preds.target, preds.score, W))


def summarize(
    kind: str,
    preds: Predictions,
    groups: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
    min_group_size: int,
    train: tuple | None = None,
    times: np.ndarray | None = None,
    attribution: dict | None = None,
) -> dict:
    n = len(preds.score)
    overall = with_ci(
        metric_fn(kind, preds, train, times), n, n_boot, seed, weighted_fn=weighted_fn(kind, preds)
    )
    by_group = {}
    for name, labels in groups.items():
        by_group[name] = {}
        for value in sorted(set(labels.tolist())):
            idx = np.flatnonzero(labels == value)
            if len(idx) < min_group_size:  # a small cell: no count, no metric (disclosure control)
                by_group[name][str(value)] = {"n": f"<{min_group_size}", "events": None}
                continue
            entry = {"n": int(len(idx)), "events": _events(kind, preds.target[idx])}
            sub = preds.rows(idx)
            entry["metrics"] = with_ci(
                metric_fn(kind, sub, train, times), len(idx), n_boot, seed, weighted_fn=weighted_fn(kind, sub)
            )
            by_group[name][str(value)] = entry
    out = {
        "task_kind": kind,
        "n": n,
        "events": _events(kind, preds.target),
        "bootstrap": {"resamples": n_boot, "seed": seed, "level": 0.95},
        "overall": overall,
        "groups": by_group,
        "min_group_size": min_group_size,
    }
    if times is not None:
        out["evaluation_times_days"] = [round(float(t), 1) for t in times]
    if attribution is not None:
        phi = attribution["phi"]
        out["attribution"] = {
            "subjects": int(len(phi)),
            "scale": "the head's score (probability for binary tasks, log hazard ratio for Cox, "
            "cumulative hazard for the discrete-time head, the label's unit for regression)",
            "mean_abs": dict(
                zip(attribution["modalities"].tolist(), np.abs(phi).mean(0).round(5).tolist(), strict=True)
            ),
            "mean": dict(zip(attribution["modalities"].tolist(), phi.mean(0).round(5).tolist(), strict=True)),
            "mean_empty_score": round(float(np.mean(attribution["empty"])), 5),
        }
    return out


def _events(kind: str, target: np.ndarray) -> int | None:
    """Positive labels or events seen; None where the task has no such notion."""
    return None if kind in ("regression", "multiclass") else int(np.asarray(target).sum())


def metric_label(value: str) -> str:
    """A subgroup's label as MLflow (and Lightning's logger) accept in a metric name: "<18" is
    "under 18", "75+" is "75 and over", a modality pattern "ehr_codes+text" is "ehr_codes.text"."""
    import re

    value = re.sub(r"^<(\d+)$", r"under \1", str(value))
    value = re.sub(r"^(\d+)\+$", r"\1 and over", value)
    return re.sub(r"[^a-zA-Z0-9_. -]", "_", value.replace("+", "."))


def flat_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """Every figure of the summary as ``<prefix>/...`` metrics: overall ``<metric>``,
    ``<metric>_ci_low`` and ``_ci_high``; ``by_<group>/<label>/<metric>`` (and ``n``, ``events``)
    for each subgroup large enough to be shown; ``attribution/...``; ``oracle/...``; ``n``, ``events``.
    NaN (undefined) figures are left out."""
    out: dict[str, float] = {}

    def put(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            return
        out[f"{prefix}/{name}"] = float(value)

    def put_metrics(base: str, metrics: dict) -> None:
        for name, entry in metrics.items():
            put(f"{base}{name}", entry["value"])
            put(f"{base}{name}_ci_low", entry["ci_low"])
            put(f"{base}{name}_ci_high", entry["ci_high"])

    put_metrics("", summary["overall"])
    put("n", summary["n"])
    put("events", summary.get("events"))
    for group, entries in summary.get("groups", {}).items():
        for label, entry in entries.items():
            base = f"by_{group}/{metric_label(label)}/"
            put(f"{base}n", entry["n"])
            put(f"{base}events", entry.get("events"))
            put_metrics(base, entry.get("metrics", {}))
    for section in ("attribution", "oracle"):
        for key, value in summary.get(section, {}).items():
            if isinstance(value, dict):
                for name, v in value.items():
                    put(f"{section}/{key}/{name}", v)
            else:
                put(f"{section}/{key}", value)
    return out
