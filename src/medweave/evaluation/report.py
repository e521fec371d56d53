"""The evaluation report: PNG figures and one HTML page that shows them with the metric and
subgroup tables. No subject ID, birth date or note text reaches it; the Kaplan-Meier step
tables it records hold event times and counts as small as one, which stay on the platform:
medweave-export coarsens them before anything leaves.

Each figure function returns ``(figures, records)``: caption -> file, and file -> the counts the
figure was drawn from (``summary["figures"]``), so that medweave-export can check a figure's
cells without the predictions (and redraw a Kaplan-Meier curve coarsened, docs/output-control.md)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

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


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Quantile bins of predicted risk: n, mean prediction and observed rate of each non-empty bin."""
    edges = np.quantile(p, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, n_bins - 1)
    return [
        {"n": int(sel.sum()), "predicted": float(p[sel].mean()), "observed": float(y[sel].mean())}
        for sel in (which == k for k in range(n_bins))
        if sel.any()
    ]


def calibration_figure(bins: list[dict], path: Path) -> str:
    plt, fig, ax = _figure()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-", label="model (bins of risk)")
    ax.set(xlabel="mean predicted risk", ylabel="observed rate", title="Calibration")
    ax.legend(loc="upper left")
    return _save(plt, fig, path)


def binary_figures(preds: Predictions, folder: Path) -> tuple[dict[str, str], dict[str, dict]]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    y, p = preds.target.astype(int), preds.score
    classes = {"positives": int(y.sum()), "negatives": int(len(y) - y.sum())}
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
    bins = calibration_bins(y, p)
    out["Calibration curve"] = calibration_figure(bins, folder / "calibration.png")
    records = {
        "roc.png": {"kind": "roc", **classes},
        "pr.png": {"kind": "precision_recall", **classes},
        "calibration.png": {"kind": "calibration", "bins": bins},
    }
    return out, records


def multi_roc_figure(
    preds: Predictions, folder: Path, names: list[str]
) -> tuple[dict[str, str], dict[str, dict]]:
    """One-vs-rest ROC per class (multiclass) or per label (multilabel)."""
    from sklearn.metrics import roc_curve

    plt, fig, ax = _figure()
    target = preds.target
    drawn = {}
    for k, name in enumerate(names):
        y = (target == k) if target.ndim == 1 else target[:, k]
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y.astype(int), preds.score[:, k])
            ax.plot(fpr, tpr, label=name)
            drawn[str(name)] = {"positives": int(y.sum()), "negatives": int(len(y) - y.sum())}
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one against the rest")
    ax.legend(loc="lower right")
    return {"ROC curves": _save(plt, fig, folder / "roc.png")}, {
        "roc.png": {"kind": "roc_per_class", "classes": drawn}
    }


HEXBIN_MIN_COUNT = 5  # cells with fewer subjects are left blank: no individual point is drawn


def regression_figure(preds: Predictions, folder: Path) -> tuple[dict[str, str], dict[str, dict]]:
    plt, fig, ax = _figure()
    low, high = np.percentile(np.concatenate([preds.target, preds.score]), [0.5, 99.5])
    cells = ax.hexbin(
        preds.target,
        preds.score,
        gridsize=25,
        mincnt=HEXBIN_MIN_COUNT,
        cmap="Blues",
        extent=(low, high, low, high),
    )
    fig.colorbar(cells, ax=ax, label="subjects")
    ax.plot([low, high], [low, high], "--", color="grey", label="identity")
    ax.set(xlabel="observed", ylabel="predicted", title="Predicted against observed")
    ax.legend(loc="upper left")
    file = _save(plt, fig, folder / "predicted_vs_observed.png")
    record = {"kind": "hexbin", "subjects": len(preds.target), "min_count": HEXBIN_MIN_COUNT}
    return {"Predicted against observed": file}, {file: record}


def kaplan_meier_curves(preds: Predictions, groups: int = 3) -> list[dict]:
    """Kaplan-Meier curves of the subjects in each third of predicted risk, as counts: per group
    its size and, at each event time, those at risk, the events and S(t) just after."""
    edges = np.quantile(preds.score, np.linspace(0, 1, groups + 1))
    which = np.clip(np.searchsorted(edges, preds.score, side="right") - 1, 0, groups - 1)
    names = ["lowest", "middle", "highest"] if groups == 3 else [f"group {k + 1}" for k in range(groups)]
    curves = []
    for k in range(groups):
        sel = which == k
        time, event = preds.time[sel], preds.target[sel].astype(bool)
        if not event.any():
            continue
        steps = np.unique(time[event])
        at_risk = (time[None, :] >= steps[:, None]).sum(1)
        events = ((time[None, :] == steps[:, None]) & event[None, :]).sum(1)
        curves.append(
            {
                "label": f"{names[k]} third of risk",
                "n": int(sel.sum()),
                "time": steps.round(2).tolist(),
                "at_risk": at_risk.astype(int).tolist(),
                "events": events.astype(int).tolist(),
                "survival": np.cumprod(1.0 - events / at_risk).round(6).tolist(),
            }
        )
    return curves


def kaplan_meier_figure(curves: list[dict], path: Path, note: str = "") -> str:
    """Step curves from their (time, survival) steps, starting at S(0) = 1; ``note`` (how a curve
    was coarsened, medweave-export) titles the legend."""
    plt, fig, ax = _figure()
    for curve in curves:
        t, s = [0.0, *curve["time"]], [1.0, *curve["survival"]]
        ax.step(t, s, where="post", label=f"{curve['label']} (n={curve['n']})")
    ax.set(xlabel="days since prediction time", ylabel="event-free", title="Kaplan-Meier by predicted risk")
    legend = ax.legend(loc="lower left", title=note or None, fontsize=8)
    if note:
        legend.get_title().set_fontsize(7)
    return _save(plt, fig, path)


def survival_figures(preds: Predictions, folder: Path, groups: int = 3) -> tuple[dict[str, str], dict]:
    curves = kaplan_meier_curves(preds, groups)
    file = kaplan_meier_figure(curves, folder / "kaplan_meier.png")
    record = {"kind": "kaplan_meier", "curves": curves}
    return {"Kaplan-Meier curves by predicted risk group": file}, {file: record}


def attribution_figure(summary: dict, folder: Path) -> tuple[dict[str, str], dict[str, dict]]:
    attribution = summary["attribution"]
    names = list(attribution["mean_abs"])
    plt, fig, ax = _figure()
    ax.barh(names, [attribution["mean_abs"][n] for n in names], color="#4477aa")
    ax.set(xlabel="mean |Shapley value|", title=f"Modality attribution ({attribution['subjects']} subjects)")
    file = _save(plt, fig, folder / "attribution.png")
    return {"Modality attribution": file}, {
        file: {"kind": "attribution", "subjects": attribution["subjects"]}
    }


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
        if "metrics" in entry:
            cells = "".join(f"<td>{_fmt(entry['metrics'][m])}</td>" for m in metric_names)
        else:
            note = entry.get("note") or f"fewer than {min_size} subjects: not reported"
            cells = f"<td colspan={len(metric_names)}>{html.escape(note)}</td>"
        rows.append(
            f"<tr><td>{html.escape(value)}</td><td>{entry['n']}</td><td>{entry['events']}</td>{cells}</tr>"
        )
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metric_names)
    return (
        f"<h3>{html.escape(title)}</h3><table><tr><th>group</th><th>n</th><th>events</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}img{max-width:500px}"
)


def html_page(title: str, parts: list[str]) -> str:
    """One report page: the title, the parts (HTML) in order, the shared style."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}{LOADED_SCRIPT}</body></html>"
    )


def figure_html(figures: dict[str, str]) -> str:
    return "".join(
        f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, file in figures.items()
    )


def auroc_histogram(aurocs: list[float], path: Path, title: str) -> str:
    """Histogram of per-code AUROCs, the mean and chance marked."""
    plt, fig, ax = _figure()
    ax.hist(aurocs, bins=np.linspace(0, 1, 41), color="#4477aa")
    if aurocs:
        ax.axvline(float(np.mean(aurocs)), color="#cc3311", label=f"mean {np.mean(aurocs):.3f}")
    ax.axvline(0.5, ls="--", color="grey", label="chance")
    ax.set(xlabel="AUROC", ylabel="codes", title=title)
    ax.legend(loc="upper left")
    return _save(plt, fig, path)


def incidence_figure(points: list[dict], pooled: list[dict], path: Path, title: str) -> str:
    """Observed against simulated incidence: one faint point per code x age band, the pooled
    calibration curve (simulate.pooled_incidence), log axes, the diagonal."""
    plt, fig, ax = _figure()
    obs = np.array([p["observed"] for p in points], float)
    sim = np.array([p["simulated"] for p in points], float)
    shown = [b for b in pooled if b["observed"] is not None]
    floor = min([v for v in np.r_[obs, sim, [b["observed"] for b in shown]] if v > 0], default=1e-3) / 2
    ax.scatter(np.maximum(sim, floor), np.maximum(obs, floor), s=8, alpha=0.25, color="#4477aa",
               label="code x age band (none observed: at the floor)")  # fmt: skip
    ax.plot([b["simulated"] for b in shown], np.maximum([b["observed"] for b in shown], floor), "o-",
            color="#cc3311", label="pooled: bins of simulated incidence")  # fmt: skip
    ax.plot([floor, 1], [floor, 1], "--", color="grey", label="simulated = observed")
    ax.set(xscale="log", yscale="log", xlabel="simulated incidence", ylabel="observed incidence")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    return _save(plt, fig, path)


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
        figure_html(figures),
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
    page = html_page(title, parts)
    (folder / "evaluation.json").write_text(json.dumps(summary, indent=2, default=float))
    path = folder / "report.html"
    path.write_text(page)
    return path
