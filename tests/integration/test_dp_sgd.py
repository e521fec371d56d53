"""privacy=dp end to end: epsilon logged each epoch and within the target, exact resume after a
preemption, DDP across two CPU ranks with the noise added once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.integration.test_preemption import mlflow_runs, signal_at

TARGET = 3.0
DP = ["privacy=dp", f"privacy.target_epsilon={TARGET}", "privacy.noise_seed=7", "evaluation.enabled=false"]


def dp_config(tiny_cohort, root: Path, *extra: str):
    from tests.conftest import compose_run

    overrides = ["debug=smoke", f"data.root={tiny_cohort}", *DP, *extra]
    return compose_run("train", overrides, root / "logs", root / "run")


def epsilon_history(root: Path) -> list[tuple[int, float]]:
    client, [run] = mlflow_runs(root)
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "privacy/epsilon")]


def privacy_state(checkpoint: Path) -> dict:
    saved = torch.load(checkpoint, weights_only=False)
    [state] = [v for k, v in saved["callbacks"].items() if k.startswith("DifferentialPrivacy")]
    return saved, state


@pytest.fixture(scope="module")
def unbroken(tiny_cohort, tmp_path_factory):
    from medweave.cli.train import train

    root = tmp_path_factory.mktemp("dp_unbroken")
    train(dp_config(tiny_cohort, root))
    return root


def test_smoke_dp_run_logs_epsilon_every_epoch_and_spends_its_target(tiny_cohort, unbroken):
    history = epsilon_history(unbroken)
    assert len(history) == 2  # debug=smoke: two epochs
    assert 0 < history[0][1] < history[1][1] <= TARGET
    assert history[1][1] >= TARGET - 0.05  # the noise is set to spend the budget by the last step
    saved, state = privacy_state(unbroken / "run" / "checkpoints" / "last.ckpt")
    assert sum(steps for *_, steps in state["accountant"]["history"]) == saved["global_step"] == 6
    assert state["epsilon"] == pytest.approx(history[-1][1])
    assert state["delta"] == 1e-5
    # GroupNorm, not BatchNorm, and nn.MultiheadAttention's keys: medweave-eval's plain model loads it.
    keys = saved["state_dict"].keys()
    assert not any("running_mean" in k for k in keys)
    assert "fusion.transformer.layers.0.self_attn.in_proj_weight" in keys
    from medweave.cli.eval import restore_for_inference
    from tests.conftest import compose_run

    last = unbroken / "run" / "checkpoints" / "last.ckpt"
    cfg = compose_run(
        "eval", [f"ckpt_path={last}", f"data.root={tiny_cohort}"], unbroken / "logs", unbroken / "eval"
    )
    _, _, model = restore_for_inference(cfg)  # loads the weights strictly
    assert not any(type(m).__name__ == "DPAttention" for m in model.modules())


@pytest.mark.slow
def test_preempted_dp_run_resumes_to_the_epsilon_and_weights_of_an_unbroken_one(
    tiny_cohort, unbroken, tmp_path
):
    from medweave.cli.train import train
    from medweave.training.preemption import Preempted

    broken = tmp_path / "broken"
    with pytest.raises(Preempted) as stop:
        train(dp_config(tiny_cohort, broken, *signal_at(4)))
    assert stop.value.step == 4  # mid-epoch 1
    train(dp_config(tiny_cohort, broken))

    a, state_a = privacy_state(unbroken / "run" / "checkpoints" / "last.ckpt")
    b, state_b = privacy_state(broken / "run" / "checkpoints" / "last.ckpt")
    assert state_a["accountant"] == state_b["accountant"]
    assert state_a["epsilon"] == state_b["epsilon"]
    assert torch.equal(state_a["noise_generator"], state_b["noise_generator"])
    for key, value in a["state_dict"].items():  # the same Poisson batches, noise and dropout
        assert torch.equal(value, b["state_dict"][key]), key
    assert epsilon_history(broken) == epsilon_history(unbroken)


def test_more_epochs_than_planned_stop_before_the_budget_is_exceeded(tiny_cohort, unbroken, tmp_path, caplog):
    """A finished run resumed with more epochs: the noise stays as planned, no step is taken."""
    import shutil

    from medweave.cli.train import train

    shutil.copytree(unbroken, tmp_path / "again")
    train(dp_config(tiny_cohort, tmp_path / "again", "trainer.max_epochs=4"))
    saved, state = privacy_state(tmp_path / "again" / "run" / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 6
    assert state["epsilon"] <= TARGET
    assert "DP-SGD stops training at step 6 of 12" in caplog.text


def test_unreachable_target_and_unsupported_fusion_are_refused(tiny_cohort, tmp_path):
    from medweave.cli.train import train
    from medweave.errors import MedweaveError

    with pytest.raises(MedweaveError, match=r"target_epsilon=0.01 is out of reach: 6 steps at sample rate"):
        train(dp_config(tiny_cohort, tmp_path / "a", "privacy.target_epsilon=0.01"))
    with pytest.raises(MedweaveError, match=r"fusion \(LowRankTensorFusion\).*model/fusion=attention"):
        train(dp_config(tiny_cohort, tmp_path / "b", "model/fusion=low_rank"))


class RanksAgree(L.Callback):
    """Fails a DDP run whose ranks end with different weights (noise added on one rank only and
    all-reduced must leave every rank with the same update)."""

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(gathered, flat)
        if not all(torch.equal(gathered[0], g) for g in gathered):
            raise RuntimeError("DDP ranks hold different weights after DP-SGD")


@pytest.mark.slow
def test_dp_under_ddp_on_two_cpu_ranks(tiny_cohort, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{repo}{os.pathsep}{env.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medweave.cli.train",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "debug=smoke",
            f"data.root={tiny_cohort}",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"+callbacks.agree._target_={__name__}.RanksAgree",
            *DP,
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    history = epsilon_history(tmp_path)
    assert len(history) == 2 and TARGET - 0.05 <= history[-1][1] <= TARGET
    [last] = (tmp_path / "logs" / "debug" / "runs").glob("*/checkpoints/last.ckpt")
    saved, state = privacy_state(last)
    assert state["sample_rate"] == 2 * 16 / 82  # the global rate: two ranks x batch 16 of 82 subjects
    assert sum(steps for *_, steps in state["accountant"]["history"]) == saved["global_step"] == 6
