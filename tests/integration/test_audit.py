"""medweave-audit end to end on the tiny sandbox cohort: target, canaries, shadow models, report."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from medweave.errors import MedweaveError
from tests.conftest import compose_run

pytestmark = pytest.mark.slow

SMOKE = [
    "debug=smoke",
    "data.modalities=[ehr_codes]",
    "trainer.max_epochs=1",
    "audit.shadow_models=2",
    "audit.bootstrap=20",
    "audit.canaries.n=2",
    "audit.canaries.candidates=8",
    "audit.canaries.codes=4",
]


def test_audit_writes_its_report_and_metrics_and_no_subject_id(tiny_cohort, tmp_path):
    from medweave.cli.audit import audit
    from tests.integration.test_train_eval import mlflow_client

    run_dir = tmp_path / "run"
    cfg = compose_run("audit", [f"data.root={tiny_cohort}", *SMOKE], tmp_path / "logs", run_dir)
    value = audit(cfg)
    report = json.loads((run_dir / "audit" / "audit.json").read_text())
    assert value == report["attacks"]["lira_online"]["auroc"]["value"]
    assert report["target"]["epochs_logged"] == 1  # read back from the target's nested MLflow run
    assert report["target"]["epsilon"] is None and report["setting"]["privacy"] == "none"
    held = pq.read_table(tiny_cohort / "metadata/subject_splits.parquet").to_pandas()
    side = int((held.split == "held_out").sum())
    assert report["setting"]["members"] == report["setting"]["non_members"] == side
    for figures in report["attacks"].values():
        for entry in figures.values():
            assert 0.0 <= entry["ci_low"] <= entry["value"] <= entry["ci_high"] <= 1.0
    canaries = report["canaries"]
    assert len(canaries["exposure_planted"]) == len(canaries["exposure_control"]) == 2
    assert all(0 <= e <= 3.0 for e in canaries["exposure_planted"] + canaries["exposure_control"])
    assert (run_dir / "audit" / "roc.png").stat().st_size > 0
    assert "Canary exposure" in (run_dir / "audit" / "report.html").read_text()
    assert not (run_dir / "work").exists()  # derived cohorts, caches and checkpoints removed

    client = mlflow_client(tmp_path / "logs")
    runs = client.search_runs([client.get_experiment_by_name("medweave").experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "audit"]
    [target] = [r for r in runs if r.info.run_name == "audit-target"]
    assert target.data.tags["mlflow.parentRunId"] == parent.info.run_id
    metrics = parent.data.metrics
    assert metrics["audit/loss/auroc"] == report["attacks"]["loss"]["auroc"]["value"]
    assert metrics["audit/canary/mean_exposure_planted"] == pytest.approx(canaries["mean_exposure_planted"])
    assert "audit/lira_online/tpr_at_fpr_1pct" in metrics and "audit/target/test_auroc" in metrics

    ids = [str(i).encode() for i in held.subject_id]
    for path in [*(tmp_path / "logs").rglob("*"), *run_dir.rglob("*")]:
        if path.is_file() and "cache" not in path.parts:
            data = path.read_bytes()
            assert not [i for i in ids if i in data], path


def test_audit_refuses_a_task_it_cannot_audit(tiny_cohort, tmp_path):
    from medweave.audit.run import check_audit_config

    cfg = compose_run(
        "audit",
        [f"data.root={tiny_cohort}", "task=hba1c_1y", "audit.shadow_models=1", "audit.fpr=[0.01,2]"],
        tmp_path / "logs",
        tmp_path / "run",
    )
    with pytest.raises(MedweaveError) as err:
        check_audit_config(cfg)
    assert all(s in str(err.value) for s in ("regression", "shadow_models=1", "audit.fpr"))
