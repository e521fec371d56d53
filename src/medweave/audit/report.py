"""The audit report: audit.json, roc.png (the attacks' ROC curves on log-log axes, as LiRA
papers draw them: what matters is the true-positive rate at low false-positive rates) and
report.html. Aggregates only: no subject ID reaches any of them; canaries are numbered."""

from __future__ import annotations

import html
import json
from pathlib import Path

NAMES = {"loss": "loss attack (Yeom et al.)", "lira_online": "LiRA online", "lira_offline": "LiRA offline"}


def _roc_figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=110)
    floor = 0.5 * report["setting"]["fpr_resolution"]
    for name, curve in report["roc"].items():
        fpr, tpr = np.maximum(curve["fpr"], floor), np.maximum(curve["tpr"], floor)
        auc = report["attacks"][name]["auroc"]["value"]
        ax.plot(fpr, tpr, label=f"{NAMES.get(name, name)} (AUROC {auc:.3f})")
    grid = np.logspace(np.log10(floor), 0, 50)
    ax.plot(grid, grid, "--", color="grey", label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("Membership inference ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _ci(entry: dict) -> str:
    return f"{entry['value']:.3f} ({entry['ci_low']:.3f}&ndash;{entry['ci_high']:.3f})"


def write_report(report: dict, folder: Path) -> Path:
    """audit.json, roc.png and report.html in ``folder``, all or nothing (written beside it,
    then renamed); returns the HTML path."""
    import shutil

    final, folder = folder, folder.with_name(folder.name + ".tmp")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _roc_figure(report, folder / "roc.png")
    s, t, k = report["setting"], report["target"], report["canaries"]
    keys = [key for key in next(iter(report["attacks"].values()))]
    head = "".join(f"<th>{html.escape(key)}</th>" for key in keys)
    rows = "".join(
        f"<tr><td>{html.escape(NAMES.get(name, name))}</td>"
        + "".join(f"<td>{_ci(figures[key])}</td>" for key in keys)
        + "</tr>"
        for name, figures in report["attacks"].items()
    )
    canaries = "".join(
        f"<tr><td>{i + 1}</td><td>{p:.2f}</td><td>{q:.2f}</td></tr>"
        for i, (p, q) in enumerate(zip(k["exposure_planted"], k["exposure_control"], strict=True))
    )
    eps = "" if t["epsilon"] is None else f" Epsilon spent: {t['epsilon']:.3g}."
    task = html.escape(report["task"])
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>Privacy audit: {task}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f3f3f3}}</style></head><body>
<h1>Privacy audit: {task}</h1>
<p>Target model: {s["max_epochs"]} epochs at most, privacy: {html.escape(s["privacy"])}. Test AUROC
{_ci(t["test_auroc"])}.{eps} Mean loss {t["mean_loss_members"]:.4f} on members,
{t["mean_loss_non_members"]:.4f} on non-members.</p>
<h2>Membership inference</h2>
<p>{s["members"]} members (train split) against {s["non_members"]} non-members (held_out);
{s["shadow_models"]} shadow models, each trained on a random half of {s["shadow_pool"]} subjects.
LiRA: {html.escape(s["lira"])}. An AUROC of 0.5 is chance. 95 % bootstrap CIs. With
{s["non_members"]} non-members a false-positive rate below {s["fpr_resolution"]:.2g} allows no
false positive at all: the TPR there is the share of members scored above every non-member.</p>
<table><tr><th>attack</th>{head}</tr>{rows}</table>
<figure><img src="roc.png" alt="ROC curves on log-log axes">
<figcaption>ROC, log-log axes</figcaption></figure>
<h2>Canary exposure</h2>
<p>Exposure in bits (Carlini et al. 2019): each canary ranked among {k["candidates"]} random code
sequences on the model's loss; ceiling {k["ceiling_bits"]:.2f} bits; about 1.4 bits (log2 e) by chance.
Planted canaries were trained on ({k["copies"]} cop{"y" if k["copies"] == 1 else "ies"} each,
{k["codes"]} codes); controls were not.
Mean: planted {k["mean_exposure_planted"]:.2f}, controls {k["mean_exposure_control"]:.2f}.</p>
<table><tr><th>canary</th><th>planted</th><th>control</th></tr>{canaries}</table>
</body></html>"""
    (folder / "audit.json").write_text(json.dumps(report, indent=2))
    (folder / "report.html").write_text(page)
    shutil.rmtree(final, ignore_errors=True)
    folder.rename(final)
    return final / "report.html"
