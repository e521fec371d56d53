"""The slurm/ templates on a real two-node Slurm cluster: DDP across nodes (CPU, gloo), preempted
by SIGUSR1, requeued, resumed into the same MLflow run on the team server (PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 6
STEPS_PER_EPOCH = 3  # debug=smoke: limit_train_batches=3 (each rank holds enough subjects for 3)


def submit(slurm, tmp_path, tiny_cohort, uri, experiment, *overrides):
    """slurm/train_multi_node.sbatch as a user would submit it, scaled down to 2 nodes x 1 CPU task."""
    return slurm.sbatch(
        REPO / "slurm" / "train_multi_node.sbatch",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
        "--gpus-per-node=0",
        "--time=20",
        f"--output={tmp_path}/slurm-%j.out",
        script_args=[
            "debug=smoke",
            f"data.root={tiny_cohort}",
            f"trainer.max_epochs={EPOCHS}",
            "callbacks.early_stopping.patience=100",
            "evaluation.enabled=false",
            f"paths.log_dir={tmp_path / 'logs'}",
            "logger=mlflow_server",
            f"logger.mlflow.experiment_name={experiment}",
            *overrides,
        ],
        env={"MEDWEAVE_MLFLOW_URI": uri, "MEDWEAVE_HARDWARE": "cpu_node"},
        cwd=REPO,
    )


def server_runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id]) if found else []


def test_two_nodes_preempted_requeued_and_resumed_into_one_run(slurm, mlflow_server, tiny_cohort, tmp_path):
    job = submit(slurm, tmp_path, tiny_cohort, mlflow_server.uri, "slurm-ddp")
    run_dir = tmp_path / "logs" / "debug" / "runs" / f"slurm-{job}"
    output = tmp_path / f"slurm-{job}.out"
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    while not last.is_file():  # an epoch is done on both ranks: training is under way
        info = slurm.job_state(job)
        assert info["JobState"] in ("PENDING", "RUNNING"), (info, output.read_text()[-3000:])
        assert time.monotonic() < deadline, f"no checkpoint after 180 s\n{output.read_text()[-3000:]}"
        time.sleep(0.2)
    signalled = time.time()
    slurm.signal(job, "USR1")  # what --signal=USR1@120 sends before a preemption or the time limit

    info = slurm.wait(job, timeout=300)
    text = output.read_text()
    assert info["JobState"] == "COMPLETED", (info, text[-4000:])
    assert info["RestartCnt"] == "1", "requeued once, by the job itself"
    assert "preempted at optimizer step" in text and f"requeueing Slurm job {job}" in text
    assert "Resuming from" in text

    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == EPOCHS * STEPS_PER_EPOCH  # no step lost or repeated
    assert (run_dir / "debug.log").is_file() and (run_dir / "debug.rank1.log").is_file()

    client, runs = server_runs(mlflow_server.uri, "slurm-ddp")
    assert len(runs) == 1, "one MLflow run across 2 ranks and a requeue"
    [run] = runs
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.num_nodes"] == "2" and run.data.params["trainer.devices"] == "1"
    history = client.get_metric_history(run.info.run_id, "val/auroc")
    assert len(history) == EPOCHS and len({h.step for h in history}) == EPOCHS
    assert 0.0 <= run.data.metrics["test/auroc"] <= 1.0
    # What a preemption cost: from the signal to the requeued job's start, and to its first step.
    [restart] = [line for line in text.splitlines() if "(restart 1)" in line]
    restarted = float(restart.rsplit("start ", 1)[1])
    steps = client.get_metric_history(run.info.run_id, "train/loss_step")
    first_after = min(m.timestamp for m in steps if m.step >= saved_step(text)) / 1000
    print(
        f"\nSIGUSR1 -> requeued job starts: {restarted - signalled:.1f} s; "
        f"-> first step after the resume: {first_after - signalled:.1f} s"
    )


def saved_step(text: str) -> int:
    return int(text.split("preempted at optimizer step ")[1].split(";")[0])


def test_sweep_through_the_submitit_launcher_runs_each_trial_as_a_slurm_job(slurm, tiny_cohort, tmp_path):
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medweave.cli.train",
            "--multirun",
            "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=10",
            "debug=smoke",
            f"data.root={tiny_cohort}",
            "trainer.accelerator=cpu",
            "evaluation.enabled=false",
            f"paths.log_dir={tmp_path / 'logs'}",
            "model/fusion=concat,gated",
        ],  # fmt: skip
        cwd=tmp_path,
        env={k: v for k, v in slurm.env.items() if k != "MLFLOW_TRACKING_URI"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    [sweep] = (tmp_path / "logs" / "debug" / "multiruns").iterdir()
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2  # two Slurm jobs, one per trial
    client = MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medweave").experiment_id])
    assert sorted(r.data.params["model.fusion._target_"].rsplit(".", 1)[1] for r in runs) == [
        "ConcatFusion",
        "GatedFusion",
    ]
    assert {r.info.status for r in runs} == {"FINISHED"}
