"""The evaluation report: PNG figures and one HTML page that shows them with the metric and
subgroup tables. Aggregates only: no subject ID, birth date or note text reaches it."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from medweave.evaluation import metrics as M
from medweave.evaluation.summary import Predictions

LOADED_SCRIPT = """<script>
// Lets a headless browser check that every figure rendered.
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
});
</script>"""


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    return plt, fig, ax


def _save(plt, fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def binary_figures(preds: Predictions, folder: Path) -> dict[str, str]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, p = preds.target.astype(int), preds.score
    out = {}
    plt, fig, ax = _figure()
    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    out["ROC curve"] = _save(plt, fig, folder / "roc.png")
    plt, fig, ax = _figure()
    precision, recall, _ = precision_recall_curve(y, p)
    ax.plot(recall, precision, label="model")
    ax.axhline(y.mean(), ls="--", color="grey", label=f"prevalence {y.mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(loc="upper right")
    out["Precision-recall curve"] = _save(plt, fig, folder / "pr.png")
    plt, fig, ax = _figure()
    predicted, observed = M.calibration_curve(y, p)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(predicted, observed, "o-", label="model (deciles of risk)")
    ax.set(xlabel="mean predicted risk", ylabel="observed rate", title="Calibration")
    ax.legend(loc="upper left")
    out["Calibration curve"] = _save(plt, fig, folder / "calibration.png")
    return out


def multi_roc_figure(preds: Predictions, folder: Path, names: list[str]) -> dict[str, str]:
    """One-vs-rest ROC per class (multiclass) or per label (multilabel)."""
    from sklearn.metrics import roc_curve

    plt, fig, ax = _figure()
    target = preds.target
    for k, name in enumerate(names):
        y = (target == k) if target.ndim == 1 else target[:, k]
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y.astype(int), preds.score[:, k])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one against the rest")
    ax.legend(loc="lower right")
    return {"ROC curves": _save(plt, fig, folder / "roc.png")}


def regression_figure(preds: Predictions, folder: Path) -> dict[str, str]:
    plt, fig, ax = _figure()
    low, high = np.percentile(np.concatenate([preds.target, preds.score]), [0.5, 99.5])
    # binned counts, cells with fewer than 5 subjects left blank: no individual point is drawn
    cells = ax.hexbin(
        preds.target, preds.score, gridsize=25, mincnt=5, cmap="Blues", extent=(low, high, low, high)
    )
    fig.colorbar(cells, ax=ax, label="subjects")
    ax.plot([low, high], [low, high], "--", color="grey", label="identity")
    ax.set(xlabel="observed", ylabel="predicted", title="Predicted against observed")
    ax.legend(loc="upper left")
    return {"Predicted against observed": _save(plt, fig, folder / "predicted_vs_observed.png")}


def survival_figures(preds: Predictions, folder: Path, groups: int = 3) -> dict[str, str]:
    """Kaplan-Meier curves of the subjects in each third of predicted risk."""
    from sksurv.nonparametric import kaplan_meier_estimator

    plt, fig, ax = _figure()
    edges = np.quantile(preds.score, np.linspace(0, 1, groups + 1))
    which = np.clip(np.searchsorted(edges, preds.score, side="right") - 1, 0, groups - 1)
    names = ["lowest", "middle", "highest"] if groups == 3 else [f"group {k + 1}" for k in range(groups)]
    for k in range(groups):
        sel = which == k
        if sel.sum() and preds.target[sel].any():
            t, s = kaplan_meier_estimator(preds.target[sel].astype(bool), preds.time[sel])
            ax.step(t, s, where="post", label=f"{names[k]} third of risk (n={sel.sum()})")
    ax.set(xlabel="days since prediction time", ylabel="event-free", title="Kaplan-Meier by predicted risk")
    ax.legend(loc="lower left")
    return {"Kaplan-Meier curves by predicted risk group": _save(plt, fig, folder / "kaplan_meier.png")}


def attribution_figure(summary: dict, folder: Path) -> dict[str, str]:
    attribution = summary["attribution"]
    names = list(attribution["mean_abs"])
    plt, fig, ax = _figure()
    ax.barh(names, [attribution["mean_abs"][n] for n in names], color="#4477aa")
    ax.set(xlabel="mean |Shapley value|", title=f"Modality attribution ({attribution['subjects']} subjects)")
    return {"Modality attribution": _save(plt, fig, folder / "attribution.png")}


def _fmt(entry: dict) -> str:
    value, low, high = entry["value"], entry["ci_low"], entry["ci_high"]
    if value != value:  # NaN
        return "n/a"
    return f"{value:.3f} <small>({low:.3f}&ndash;{high:.3f})</small>"


def _oracle_table(oracle: dict | None) -> str:
    """The sandbox's ceilings for the same split: how far the model is from the best possible."""
    if not oracle:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{value:.3f}</td></tr>"
        for name, value in oracle.items()
        if name != "metric" and value is not None
    )
    return (
        f"<h3>Sandbox oracle ({html.escape(oracle['metric'])})</h3>"
        f"<table><tr><th>best possible score</th><th>{html.escape(oracle['metric'])}</th></tr>{rows}</table>"
    )


def _events_text(events) -> str:
    return "" if events is None else f", {events} events"


def _metric_table(metrics: dict) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in metrics)
    row = "".join(f"<td>{_fmt(v)}</td>" for v in metrics.values())
    return f"<table><tr>{head}</tr><tr>{row}</tr></table>"


def _group_table(title: str, entries: dict, metric_names: list[str], min_size: int) -> str:
    rows = []
    for value, entry in entries.items():
        cells = (
            "".join(f"<td>{_fmt(entry['metrics'][m])}</td>" for m in metric_names)
            if "metrics" in entry
            else f"<td colspan={len(metric_names)}>fewer than {min_size} subjects: not reported</td>"
        )
        rows.append(
            f"<tr><td>{html.escape(value)}</td><td>{entry['n']}</td><td>{entry['events']}</td>{cells}</tr>"
        )
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metric_names)
    return (
        f"<h3>{html.escape(title)}</h3><table><tr><th>group</th><th>n</th><th>events</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def write_report(folder: Path, summary: dict, figures: dict[str, str], title: str) -> Path:
    """report.html and evaluation.json in ``folder`` (figures already saved there)."""
    names = list(summary["overall"])
    group_titles = {"sex": "By sex", "age_band": "By age band", "modalities": "By modality availability"}
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{summary['n']} subjects{_events_text(summary['events'])}. 95 % confidence intervals from "
        f"{summary['bootstrap']['resamples']} bootstrap resamples of subjects.</p>",
        "<h2>Metrics</h2>",
        _metric_table(summary["overall"]),
        _oracle_table(summary.get("oracle")),
        "<h2>Figures</h2>",
        *(
            f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            for caption, file in figures.items()
        ),
        "<h2>Subgroups</h2>",
        *(
            _group_table(group_titles.get(g, g), entries, names, summary["min_group_size"])
            for g, entries in summary["groups"].items()
        ),
    ]
    if "attribution" in summary:
        a = summary["attribution"]
        rows = "".join(
            f"<tr><td>{html.escape(m)}</td><td>{a['mean_abs'][m]:.4f}</td><td>{a['mean'][m]:+.4f}</td></tr>"
            for m in a["mean_abs"]
        )
        parts += [
            "<h2>Modality attribution</h2>",
            "<p>Exact Shapley values over subsets of modalities (absent = masked as missing), "
            f"on {a['scale']}; "
            f"mean score with no modality: {a['mean_empty_score']:.4f}.</p>",
            f"<table><tr><th>modality</th><th>mean |&phi;|</th><th>mean &phi;</th></tr>{rows}</table>",
        ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}img{max-width:500px}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}{LOADED_SCRIPT}</body></html>"
    )
    (folder / "evaluation.json").write_text(json.dumps(summary, indent=2, default=float))
    path = folder / "report.html"
    path.write_text(page)
    return path
