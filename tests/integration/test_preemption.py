"""Preemption: a run stopped by SIGUSR1 and resumed ends exactly where an unbroken run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import lightning as L
import pytest
import torch

pytestmark = pytest.mark.slow

# Enough steps to stop twice in the middle of epochs: 3 epochs of 4 batches.
LONGER = ["trainer.max_epochs=3", "trainer.limit_train_batches=4", "evaluation.enabled=false"]


class SignalAt(L.Callback):
    """Sends this process SIGUSR1 after optimizer step ``step``, as Slurm would before preempting.
    The run stops before the next step."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def run_config(tiny_cohort, root, *extra):
    from tests.conftest import compose_run

    overrides = ["debug=smoke", f"data.root={tiny_cohort}", *LONGER, *extra]
    return compose_run("train", overrides, root / "logs", root / "run")


def signal_at(step):
    name = f"{__name__}.SignalAt"
    return [f"+callbacks.signal._target_={name}", f"+callbacks.signal.step={step}"]


def mlflow_runs(root):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(root / 'logs' / 'mlflow' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("medweave")
    return client, client.search_runs([experiment.experiment_id])


def test_preempted_twice_and_resumed_equals_an_unbroken_run(tiny_cohort, tmp_path):
    from medweave.cli.train import train
    from medweave.training.preemption import Preempted

    unbroken = tmp_path / "unbroken"
    train(run_config(tiny_cohort, unbroken))

    broken = tmp_path / "broken"
    with pytest.raises(Preempted) as first:
        train(run_config(tiny_cohort, broken, *signal_at(2)))
    assert first.value.step == 2  # mid-epoch 0
    with pytest.raises(Preempted) as second:
        train(run_config(tiny_cohort, broken, *signal_at(6)))
    assert second.value.step == 6  # mid-epoch 1, after a resume
    train(run_config(tiny_cohort, broken))

    a = torch.load(unbroken / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(broken / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert torch.equal(
        a["optimizer_states"][0]["state"][0]["exp_avg_sq"], b["optimizer_states"][0]["state"][0]["exp_avg_sq"]
    )

    client_a, [run_a] = mlflow_runs(unbroken)
    client_b, runs_b = mlflow_runs(broken)
    assert len(runs_b) == 1, "a resumed run continues its MLflow run"
    [run_b] = runs_b
    assert run_b.info.status == "FINISHED"
    for key in ("val/auroc", "val/loss", "test/auroc", "test/loss", "train/loss_step"):
        history_a = [(m.step, m.value) for m in client_a.get_metric_history(run_a.info.run_id, key)]
        history_b = [(m.step, m.value) for m in client_b.get_metric_history(run_b.info.run_id, key)]
        assert history_a == history_b, key
    assert run_b.data.params["callbacks.signal.step"] == "2", "params are those of the first launch"
    extra = {"callbacks.signal._target_", "callbacks.signal.step"}
    assert run_b.data.params.keys() - run_a.data.params.keys() == extra


def test_cli_exits_75_on_sigusr1_and_the_same_folder_resumes(tiny_cohort, tmp_path):
    """The real entry point in a child process, signalled from outside while it trains."""
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "medweave.cli.train",
        "debug=smoke",
        f"data.root={tiny_cohort}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=12",
        "evaluation.enabled=false",
        "callbacks.early_stopping.patience=100",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    child = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and time.monotonic() < deadline:  # an epoch done: training is under way
        assert child.poll() is None, child.stdout.read()[-3000:]
        time.sleep(0.1)
    child.send_signal(signal.SIGUSR1)
    output = child.communicate(timeout=240)[0]
    assert child.returncode == 75, output[-3000:]
    assert "preempted at optimizer step" in output
    assert f"hydra.run.dir={run_dir}" in output
    assert "Traceback" not in output
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert 0 < saved["global_step"] < 12 * 3

    resumed = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 12 * 3
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_a_kill_during_a_save_never_corrupts_the_last_checkpoint(tmp_path):
    """SIGKILL a process that saves 40 MB checkpoints in a loop, at random moments, five times."""
    import random

    from medweave.training.checkpoint_io import remove_partials

    path = tmp_path / "last.ckpt"
    saver = textwrap.dedent(
        f"""
        import itertools, torch
        from medweave.training.checkpoint_io import atomic_save
        weights = torch.randn(10_000_000, generator=torch.Generator().manual_seed(0))
        for n in itertools.count():
            atomic_save({{"n": n, "weights": weights + n}}, {str(path)!r})
        """
    )
    weights = torch.randn(10_000_000, generator=torch.Generator().manual_seed(0))
    rng = random.Random(0)
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", saver])
        while not path.is_file():
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        child.kill()
        child.wait()
        saved = torch.load(path, weights_only=True)  # a torn file would not even load
        assert torch.equal(saved["weights"], weights + saved["n"])
    remove_partials(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
