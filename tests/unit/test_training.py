"""Where a run lives and how it resumes: run folders per launch, resume points, Slurm plumbing."""

from __future__ import annotations

import os
import stat

import pytest

from medweave.cli.hydra_main import rank_suffix, run_stamp
from medweave.training import preemption

LAUNCH_VARS = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "RANK")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in (*LAUNCH_VARS, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_run_folder_is_the_launch_s_id_so_ranks_and_requeues_share_it(no_launcher):
    assert run_stamp()[:2] == "20"  # a time stamp when nothing launched us
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id
    assert run_stamp()[:2] == "20"
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_stamp() == "torchrun-abc"
    no_launcher.setenv("SLURM_JOB_ID", "123")
    assert run_stamp() == "slurm-123"
    no_launcher.setenv("SLURM_ARRAY_JOB_ID", "120")
    no_launcher.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_stamp() == "slurm-120_3"


def test_each_rank_but_the_first_logs_to_a_file_of_its_own(no_launcher):
    assert rank_suffix() == ""
    no_launcher.setenv("SLURM_PROCID", "3")
    assert rank_suffix() == ".rank3"
    no_launcher.setenv("RANK", "0")  # torchrun's RANK wins over Slurm's
    assert rank_suffix() == ""


def test_resume_point_is_the_asked_checkpoint_else_the_folder_s_last(tmp_path):
    assert preemption.resume_checkpoint(tmp_path) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"x")
    (folder / ".last.ckpt.partial-99").write_bytes(b"half")  # a save killed halfway
    assert preemption.resume_checkpoint(tmp_path) == str(folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert preemption.resume_checkpoint(tmp_path, "other.ckpt") == "other.ckpt"


def test_requeue_calls_scontrol_with_the_job_or_array_task(no_launcher, tmp_path):
    calls = tmp_path / "calls"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    no_launcher.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert preemption.requeue_slurm_job() is None  # not in Slurm: nothing to requeue
    no_launcher.setenv("SLURM_JOB_ID", "77")
    assert preemption.requeue_slurm_job() == "77"
    no_launcher.setenv("SLURM_ARRAY_JOB_ID", "70")
    no_launcher.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert preemption.requeue_slurm_job() == "70_2"
    assert calls.read_text().splitlines() == ["requeue 77", "requeue 70_2"]


def test_under_srun_lightning_s_own_requeue_is_off(no_launcher):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from medweave.training.checkpoint_io import AtomicCheckpointIO

    [io] = preemption.trainer_plugins()
    assert isinstance(io, AtomicCheckpointIO)
    no_launcher.setenv("SLURM_NTASKS", "2")
    no_launcher.setenv("SLURM_NTASKS_PER_NODE", "2")
    no_launcher.setenv("SLURM_JOB_NAME", "medweave")
    _, slurm = preemption.trainer_plugins()
    assert isinstance(slurm, SLURMEnvironment) and not slurm.auto_requeue


def test_fsdp_config_gives_full_state_dict_checkpoints():
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    from tests.conftest import compose

    strategy = instantiate(compose("train", ["trainer=fsdp", "data.root=/x"]).trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
