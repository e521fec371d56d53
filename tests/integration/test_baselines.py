"""The tabular baseline arms end to end on the tiny sandbox: the report and the comparison row."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_train_eval import mlflow_client, only_run, run_cli


@pytest.mark.slow
def test_baseline_arms_join_the_ablation_table(tiny_cohort, tmp_path):
    """experiment=ablation runs the baselines as arms: each has the report every arm has, and a
    row of the comparison named for the baseline."""
    import csv

    proc = run_cli(
        "medweave.cli.train",
        "--multirun",
        "experiment=ablation",
        "debug=smoke",
        f"data.root={tiny_cohort}",
        "ablation=baseline_gbm,baseline_linear",
        cwd=tmp_path,
        OMP_NUM_THREADS="1",  # XGBoost's threads: all cores, busy-waiting, on a shared 2-core machine
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sweep] = list((tmp_path / "logs").glob("*/multiruns/*"))
    rows = list(csv.DictReader(open(sweep / "comparison.csv")))
    assert {r["fusion"] for r in rows} == {"baseline gbm", "baseline linear"}
    assert {r["modalities"] for r in rows} == {"ehr_codes"}
    assert all(float(r["auroc_ci_low"]) <= float(r["auroc"]) <= float(r["auroc_ci_high"]) for r in rows)
    for job in ("0", "1"):
        folder = sweep / job / "evaluation"
        summary = json.loads((folder / "evaluation.json").read_text())
        assert {"auroc", "auprc", "brier", "ece"} <= set(summary["overall"])
        assert {"roc.png", "pr.png", "calibration.png"} <= set(summary["figures"])
        assert summary["oracle"]["metric"] == "auroc"  # the sandbox's ceiling beside it
        assert (folder / "report.html").exists() and (sweep / job / "baseline.pkl").exists()
    client = mlflow_client(tmp_path / "logs")
    runs = only_run(client)
    arms = [r for r in runs if not r.info.run_name.endswith("-comparison")]
    assert len(arms) == 2
    for run in arms:
        assert "test/auroc" in run.data.metrics and "val/auroc" in run.data.metrics
        assert run.data.params["baseline.name"] in {"gbm", "linear"}


@pytest.mark.parametrize("baseline", ["gbm", "linear"])
def test_survival_baseline_reports_c_index(smoke_cfg, tiny_cohort, tmp_path, baseline):
    """On a cohort of EHR events alone, with data.modalities left at all four (a baseline reads
    the events only)."""
    import shutil

    from medweave.cli.train import train

    events_only = tmp_path / "events_only"
    shutil.copytree(tiny_cohort, events_only, ignore=shutil.ignore_patterns("imaging", "genomics"))
    cfg = smoke_cfg(f"baseline={baseline}", "task=cvd_survival", "logger=csv", f"data.root={events_only}")
    if baseline == "gbm":
        cfg.baseline.model.threads = 1
    assert len(cfg.data.modalities) == 4
    value = train(cfg)
    summary = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    assert summary["task_kind"] == "survival"
    assert 0.0 <= summary["overall"]["c_index"]["value"] <= 1.0
    assert 0.0 <= value <= 1.0  # the tuning C-index, what a sweeper would optimise
    assert "kaplan_meier.png" in summary["figures"]
