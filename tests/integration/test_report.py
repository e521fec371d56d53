"""medweave-eval's report: written, logged to MLflow, and rendered by a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.integration.test_train_eval import all_artifacts, mlflow_client, only_run, run_cli

pytestmark = pytest.mark.slow


def render_in_chromium(page, tmp_path) -> dict[str, int]:
    """Load the page in headless Chromium and read back how many figures actually rendered."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Chromium is missing: scripts/test-deps.sh installs it (apt-get install chromium)"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout).group(1)
    found = dict(re.findall(r'data-(images|images-loaded)="(\d+)"', body))
    return {k: int(v) for k, v in found.items()}


def run_eval(smoke_cfg, tmp_path, tiny_cohort, *overrides):
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose_run

    train(smoke_cfg(*overrides))
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    cfg = compose_run(
        "eval",
        [
            f"ckpt_path={ckpt}",
            f"data.root={tiny_cohort}",
            "evaluation.bootstrap=30",
            "evaluation.min_group_size=5",
        ],
        tmp_path / "logs",
        tmp_path / "eval",
    )
    return evaluate(cfg), tmp_path / "eval" / "evaluation"


def test_binary_report_renders_and_is_logged(smoke_cfg, tmp_path, tiny_cohort):
    results, folder = run_eval(smoke_cfg, tmp_path, tiny_cohort)
    summary = json.loads((folder / "evaluation.json").read_text())
    overall = summary["overall"]
    assert set(overall) == {"auroc", "auprc", "brier", "ece"}
    assert overall["auroc"]["value"] == pytest.approx(results["test/auroc"], abs=1e-6)
    assert overall["auroc"]["ci_low"] <= overall["auroc"]["value"] <= overall["auroc"]["ci_high"]
    assert set(summary["groups"]) == {"sex", "age_band", "modalities"}
    assert set(summary["groups"]["sex"]) == {"female", "male"}
    assert set(summary["attribution"]["mean_abs"]) == {"ehr_codes", "text", "image", "genomics"}

    page = folder / "report.html"
    shown = render_in_chromium(page, tmp_path)
    assert shown["images"] == 4 and shown["images-loaded"] == 4  # ROC, PR, calibration, attribution
    html = page.read_text()

    client = mlflow_client(tmp_path / "logs")
    eval_run = only_run(client)[0]
    assert "evaluation/report.html" in all_artifacts(client, eval_run.info.run_id)
    assert "test/auroc_ci_low" in eval_run.data.metrics and "test/ece_ci_high" in eval_run.data.metrics
    import pyarrow.parquet as pq

    ids = pq.read_table(tiny_cohort / "metadata/subject_splits.parquet").column("subject_id").to_pylist()
    assert not any(str(s) in html for s in ids)  # aggregates only


def test_survival_report_has_kaplan_meier_and_ipcw_metrics(smoke_cfg, tmp_path, tiny_cohort):
    results, folder = run_eval(smoke_cfg, tmp_path, tiny_cohort, "task=cvd_survival")
    summary = json.loads((folder / "evaluation.json").read_text())
    assert set(summary["overall"]) == {"c_index", "c_index_uno", "td_auc", "ibs"}
    assert summary["overall"]["c_index"]["value"] == pytest.approx(results["test/c_index"], abs=1e-6)
    assert 0 < summary["overall"]["ibs"]["value"] < 0.5
    meta = json.loads((tiny_cohort / "metadata/dataset.json").read_text())["medweave"]["oracle"][
        "cvd_survival"
    ]
    assert summary["oracle"]["metric"] == "c_index"  # the C-index next to the sandbox's oracle C-index
    assert summary["oracle"]["true risk"] == meta["c_index"]["held_out"]
    assert "Sandbox oracle (c_index)" in (folder / "report.html").read_text()
    assert (folder / "kaplan_meier.png").exists()
    shown = render_in_chromium(folder / "report.html", tmp_path)
    assert shown["images"] == shown["images-loaded"] == 2  # Kaplan-Meier, attribution


def test_ablation_multirun_writes_a_comparison_table(tiny_cohort, tmp_path):
    """One command, several arms, one table (here two arms of the ten, to stay fast)."""
    import csv

    proc = run_cli(
        "medweave.cli.train",
        "--multirun",
        "experiment=ablation",
        "debug=smoke",
        f"data.root={tiny_cohort}",
        "ablation=only_ehr_codes,fusion_late",  # the command line narrows the sweep
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sweep] = list((tmp_path / "logs").glob("*/multiruns/*"))
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert {r["modalities"] for r in rows} == {"ehr_codes", "ehr_codes+text+image+genomics"}
    assert all(float(r["auroc_ci_low"]) <= float(r["auroc"]) <= float(r["auroc_ci_high"]) for r in rows)
    assert float(rows[0]["auroc"]) >= float(rows[1]["auroc"])  # best first
    assert "| job |" in (sweep / "comparison.md").read_text()
    client = mlflow_client(tmp_path / "logs")
    runs = only_run(client)
    [table_run] = [r for r in runs if r.info.run_name.endswith("-comparison")]
    assert set(all_artifacts(client, table_run.info.run_id)) == {"comparison.md", "comparison.csv"}
    assert len(runs) == 3  # two arms and the table
