"""Launches without Slurm, with the same configs: torchrun across two "nodes" (c10d rendezvous) on
CPU processes (gloo); FSDP, which Lightning runs only on GPUs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}  # 2 cores: one thread per rank


def mlflow_runs(log_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(log_dir / 'mlflow' / 'mlflow.db').resolve()}")
    return client.search_runs([client.get_experiment_by_name("medweave").experiment_id])


def test_torchrun_across_two_nodes_trains_one_run(tiny_cohort, tmp_path):
    """What each node of a cluster without Slurm runs: the same command, one rendezvous endpoint."""
    port = free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=job42",
        "-m", "medweave.cli.train",
        "trainer=ddp_multi_node", "trainer.num_nodes=2", "trainer.devices=1", "trainer.accelerator=cpu",
        "debug=smoke", f"data.root={tiny_cohort}", f"paths.log_dir={tmp_path / 'logs'}",
        "evaluation.enabled=false",
    ]  # fmt: skip
    logs = [tmp_path / f"node{i}.out" for i in range(2)]  # files, not pipes: a full pipe would stall a rank
    nodes = [
        subprocess.Popen(
            command, cwd=tmp_path, env=clean_env(), stdout=log.open("w"), stderr=subprocess.STDOUT
        )
        for log in logs
    ]
    for node, log in zip(nodes, logs, strict=True):
        assert node.wait(timeout=300) == 0, log.read_text()[-4000:]

    run_dir = tmp_path / "logs" / "debug" / "runs" / "torchrun-job42"  # one folder for both nodes
    assert (run_dir / "debug.log").is_file() and (run_dir / "debug.rank1.log").is_file()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 * 3  # debug=smoke: 2 epochs of 3 batches on each rank
    [run] = mlflow_runs(tmp_path / "logs")
    assert run.data.params["trainer.num_nodes"] == "2"
    assert 0.0 <= run.data.metrics["test/auroc"] <= 1.0


@pytest.mark.gpu
def test_pretraining_under_fsdp_in_bf16_checkpoints_the_backbone_keys(tiny_cohort, tmp_path):
    """medweave-pretrain trainer=fsdp precision bf16-mixed: the checkpoint is the full state dict
    under the plain backbone's keys, so fine-tuning loads it like a DDP or one-device one."""
    devices = min(torch.cuda.device_count(), 2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medweave.cli.pretrain",
            "trainer=fsdp",
            "trainer.accelerator=gpu",
            f"trainer.devices={devices}",
            "trainer.precision=bf16-mixed",
            "debug=pretrain_smoke",
            f"data.root={tiny_cohort}",
            f"paths.log_dir={tmp_path / 'logs'}",
            "logger=csv",
        ],  # fmt: skip
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [last] = (tmp_path / "logs" / "debug" / "runs").glob("*/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=False)
    assert "backbone.transformer.layers.0.self_attn.in_proj_weight" in saved["state_dict"]
    assert saved["medweave"]["kind"] == "pretrain"


@pytest.mark.gpu
def test_fsdp_checkpoints_a_full_state_dict(tiny_cohort, tmp_path):
    devices = min(torch.cuda.device_count(), 2)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medweave.cli.train",
            "trainer=fsdp",
            "trainer.accelerator=gpu",
            f"trainer.devices={devices}",
            "debug=smoke",
            f"data.root={tiny_cohort}",
            f"paths.log_dir={tmp_path / 'logs'}",
            "evaluation.enabled=false",
            "logger=csv",
        ],  # fmt: skip
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    [last] = (tmp_path / "logs" / "debug" / "runs").glob("*/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == 2 * 3
    # Full (unsharded) weights: evaluation and resume read them like any other checkpoint.
    assert any(k.startswith("encoders.ehr_codes") for k in saved["state_dict"])
