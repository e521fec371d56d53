"""Few-shot results: each run's held-out AUROC with its bootstrap CI, the curve per arm (mean over
draws, a 95 % t-interval over draws as the band), the plot and the HTML page (the evaluation
report's pieces, evaluation/report.py)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from medweave.evaluation import resampled
from medweave.evaluation.bootstrap import with_ci
from medweave.evaluation.report import LOADED_SCRIPT, _figure, _save
from medweave.fewshot.draws import ALL


def held_out_auroc(target: np.ndarray, score: np.ndarray, n_boot: int, seed: int) -> dict:
    """{"auroc": {"value", "ci_low", "ci_high"}}: percentile bootstrap over held-out subjects."""
    from sklearn.metrics import roc_auc_score

    y, p = np.asarray(target, float), np.asarray(score, float)

    def point(idx):
        return {"auroc": roc_auc_score(y[idx], p[idx]) if 0 < y[idx].sum() < len(idx) else np.nan}

    return with_ci(point, len(y), n_boot, seed, weighted_fn=lambda W: {"auroc": resampled.auroc(y, p, W)})


def curves(rows: list[dict]) -> dict:
    """{arm: [{"k", "mean", "low", "high", "draws"}]} in k order ("all" last). The band is a 95 %
    t-interval of the mean over draws; a k with one run shows that run's bootstrap CI instead."""
    from scipy import stats

    out: dict[str, list] = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        ks = sorted({r["k"] for r in mine}, key=lambda k: (k == ALL, k if k != ALL else 0))
        points = []
        for k in ks:
            runs = [r for r in mine if r["k"] == k]
            values = np.array([r["auroc"] for r in runs], float)
            mean = float(np.nanmean(values))
            if len(runs) > 1:
                half = stats.t.ppf(0.975, len(runs) - 1) * np.nanstd(values, ddof=1) / np.sqrt(len(runs))
                low, high = mean - half, mean + half
            else:
                low, high = runs[0]["auroc_ci_low"], runs[0]["auroc_ci_high"]
            points.append({"k": k, "mean": mean, "low": float(low), "high": float(high), "draws": len(runs)})
        out[arm] = points
    return out


def plot(curve: dict, oracle: float | None, path: Path, title: str) -> str:
    """AUROC against k (log2 axis), one line and band per arm; "all" sits one step right of the
    largest k; the sandbox oracle dashed."""
    plt, fig, ax = _figure()
    numeric = sorted({p["k"] for pts in curve.values() for p in pts if p["k"] != ALL})
    all_x = 2 * numeric[-1] if numeric else 1
    for arm, points in curve.items():
        x = np.array([all_x if p["k"] == ALL else p["k"] for p in points], float)
        mean = np.array([p["mean"] for p in points])
        (line,) = ax.plot(x, mean, "o-", label=arm, markersize=3)
        ax.fill_between(
            x, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2, color=line.get_color()
        )
    if oracle is not None:
        ax.axhline(oracle, ls="--", color="grey", label="oracle")
    ax.set_xscale("log", base=2)
    has_all = any(p["k"] == ALL for pts in curve.values() for p in pts)
    ax.set_xticks([*numeric, *([all_x] if has_all else [])], [str(k) for k in numeric] + ["all"] * has_all)
    ax.set_xlabel("k (positive and negative training examples each)")
    ax.set_ylabel("held-out AUROC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def write_html(folder: Path, summary: dict, figure: str) -> Path:
    """report.html: the plot and the table of means (band) per arm and k."""
    curve = summary["curves"]
    ks = sorted(
        {p["k"] for pts in curve.values() for p in pts}, key=lambda k: (k == ALL, k if k != ALL else 0)
    )
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in ks)

    def cell(p: dict | None) -> str:
        if p is None:
            return "<td></td>"
        return f"<td>{p['mean']:.3f} <small>({p['low']:.3f}&ndash;{p['high']:.3f})</small></td>"

    body = []
    for arm, points in curve.items():
        by_k = {p["k"]: p for p in points}
        cells = "".join(cell(by_k.get(k)) for k in ks)
        body.append(f"<tr><td>{html.escape(arm)}</td>{cells}</tr>")
    oracle = summary.get("oracle")
    title = f"Few-shot curves: {summary['task']}"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{summary['held_out']['n']} held-out subjects ({summary['held_out']['positives']} positive). "
        + (
            f"Cut short (fewshot.max_minutes): {summary['runs_done']} of {summary['runs_planned']} runs. "
            if summary["runs_done"] < summary["runs_planned"]
            else ""
        )
        + f"{summary['draws']} draw(s) per k of k positive and k negative train subjects (and as many "
        "tuning subjects, for early stopping and the probe's penalty). Cells: mean held-out AUROC "
        "over draws, in brackets a 95 % t-interval over draws (one run: its bootstrap CI).</p>",
        f"<table><tr><th>arm</th>{head}</tr>{''.join(body)}</table>",
        f"<p>Sandbox oracle (true risk, EHR-visible part): {oracle:.3f}</p>" if oracle is not None else "",
        f'<figure><img src="{html.escape(figure)}" alt="AUROC against k"><figcaption>AUROC against k'
        "</figcaption></figure>",
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}{LOADED_SCRIPT}</body></html>"
    )
    path = folder / "report.html"
    path.write_text(page)
    (folder / "fewshot.json").write_text(json.dumps(summary, indent=1, default=str))
    return path
