"""benchmarks/logging_overhead.py and benchmarks/startup.py keep running and reporting (no timing is
asserted), and asynchronous MLflow logging loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]
INITDB = Path("/usr/lib/postgresql/15/bin/initdb")
RUN_KEYS = {
    "store",
    "synchronous",
    "train_wall_s",
    "logging_s",
    "logging_share",
    "logger_init_s",
    "logging_share_with_init",
    "background_write_s",
    "calls",
    "train_loss_step_points_in_store",
    "expected_train_loss_step_points",
    "run_status",
}


def bench(script: str, *args: str, timeout: float = 600) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_logging_result(result: dict, stores: list[str]) -> None:
    assert result["benchmark"] == "logging_overhead" and result["steps"] == 4
    assert [(r["store"], r["synchronous"]) for r in result["runs"]] == [
        (store, sync) for store in stores for sync in (True, False)
    ]
    for run in result["runs"]:
        assert set(run) == RUN_KEYS
        assert run["run_status"] == "FINISHED"
        assert run["train_loss_step_points_in_store"] == run["expected_train_loss_step_points"] == 4
        assert {"log_metrics", "log_hyperparams", "finalize", "logger_init"} <= set(run["calls"])
        assert 0 < run["logging_s"] < run["train_wall_s"]
    assert "mlflow_import_s" in result["setup"]


def test_logging_overhead_runs_and_reports_on_sqlite():
    result = bench(
        "logging_overhead.py", "--smoke", "--subjects", "60", "--steps", "4", "--stores", "sqlite"
    )  # debug=smoke logs every step
    check_logging_result(result, ["sqlite"])
    assert "sqlite_store_create_s" in result["setup"]


def test_logging_overhead_starts_and_stops_its_own_server():
    if not INITDB.exists():
        pytest.skip("PostgreSQL 15 is not installed: run scripts/test-deps.sh")
    result = bench("logging_overhead.py", "--smoke", "--subjects", "60", "--steps", "4", "--stores", "server")
    check_logging_result(result, ["server"])
    assert result["setup"]["server_start_s"] > 0
    # Stopped, and its home removed: nothing runs from there any more.
    home = result["setup"]["server_home"]
    assert not Path(home).exists()
    left = subprocess.run(["pgrep", "-f", home], capture_output=True, text=True)
    assert left.stdout.strip() == "", left.stdout


def test_startup_runs_and_reports():
    result = bench("startup.py", "--repeats", "2", "--subjects", "60")
    assert result["benchmark"] == "startup"
    for key in ("medweave_train_help", "medweave_validate_nonexistent"):
        assert len(result[key]["runs_s"]) == 2 and result[key]["best_s"] > 0
    for key in ("first_step_smoke", "first_step_smoke_ehr_codes_only"):
        entry = result[key]
        assert len(entry["to_first_step_runs_s"]) == 2
        for run in (entry["cold_cache"], entry["warm_cache_best"]):
            assert 0 < run["to_config_and_imports_s"] <= run["to_fit_start_s"] <= run["to_first_step_s"]
    modules = result["heavy_modules_at_first_step"]
    assert {"torch", "lightning"} <= set(modules["all_modalities"])
    # Only the EHR encoder is configured: medweave imports none of the image, genomics or survival
    # libraries. (transformers is imported all the same: Lightning imports torchmetrics, whose text
    # metrics import it when it is installed.)
    assert not {"monai", "nibabel", "pydicom", "pysam", "sksurv"} & set(modules["ehr_codes"])


def test_async_logging_keeps_every_metric(smoke_cfg, tmp_path):
    """Asynchronous logging (the default), one point per step: after train() returns, every step,
    epoch and the test and evaluation values after it are in the store, and the run FINISHED."""
    from mlflow.tracking import MlflowClient

    from medweave.cli.train import train

    cfg = smoke_cfg("trainer.max_epochs=4", "trainer.log_every_n_steps=1", "logger.mlflow.synchronous=false")
    train(cfg)

    client = MlflowClient(f"sqlite:///{(tmp_path / 'logs' / 'mlflow' / 'mlflow.db').resolve()}")
    [run] = client.search_runs([client.get_experiment_by_name("medweave").experiment_id])
    run_id = run.info.run_id
    steps = 4 * cfg.trainer.limit_train_batches
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss_step")) == list(range(steps))
    assert len(client.get_metric_history(run_id, "val/loss")) == 4
    assert len(client.get_metric_history(run_id, "train/loss_epoch")) == 4
    assert {"test/auroc", "test/auroc_ci_low", "test/auroc_ci_high"} <= set(run.data.metrics)
    assert run.data.params["logger.mlflow.synchronous"] == "False"
    assert run.info.status == "FINISHED"
