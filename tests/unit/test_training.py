"""Where a run lives and how it resumes: run folders per launch, resume points, Slurm plumbing."""

from __future__ import annotations

import os
import stat

import pytest

from medweave.errors import MedweaveError
from medweave.launch import rank_suffix, run_stamp
from medweave.training import preemption

LAUNCH_VARS = (
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "TORCHELASTIC_RUN_ID",
)
RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")


@pytest.fixture
def no_launcher(monkeypatch):
    for name in (*LAUNCH_VARS, *RANK_VARS, "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_run_folder_is_the_launch_s_id_so_ranks_and_requeues_share_it(no_launcher):
    assert run_stamp()[:2] == "20"  # a time stamp when nothing launched us
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id
    assert run_stamp()[:2] == "20"
    no_launcher.setenv("WORLD_SIZE", "2")  # ... across nodes, each would make its own folder
    with pytest.raises(MedweaveError, match="--rdzv-id"):
        run_stamp()
    no_launcher.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_stamp() == "torchrun-abc"
    no_launcher.setenv("SLURM_JOB_ID", "123")
    assert run_stamp() == "slurm-123"
    no_launcher.setenv("SLURM_STEP_ID", "0")  # the first srun of a job, requeued or not
    assert run_stamp() == "slurm-123"
    no_launcher.setenv("SLURM_STEP_ID", "2")  # a third srun in the same job: a run of its own
    assert run_stamp() == "slurm-123-step2"
    no_launcher.setenv("SLURM_STEP_ID", "4294967294")  # the batch script itself
    assert run_stamp() == "slurm-123"
    no_launcher.delenv("SLURM_STEP_ID")
    no_launcher.setenv("SLURM_ARRAY_JOB_ID", "120")
    no_launcher.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_stamp() == "slurm-120_3"


def test_each_rank_but_the_first_logs_to_a_file_of_its_own(no_launcher):
    assert rank_suffix() == ""
    no_launcher.setenv("SLURM_PROCID", "3")
    assert rank_suffix() == ".rank3"
    no_launcher.setenv("RANK", "0")  # torchrun's RANK wins over Slurm's
    assert rank_suffix() == ""
    for name in ("RANK", "SLURM_PROCID"):
        no_launcher.delenv(name)
    no_launcher.setenv("LOCAL_RANK", "1")  # Lightning's own launcher (trainer=ddp on one node)
    assert rank_suffix() == ".rank1"


def test_resume_point_is_the_folder_s_last_checkpoint_else_the_asked_one(tmp_path):
    assert preemption.resume_checkpoint(tmp_path) is None
    assert preemption.resume_checkpoint(tmp_path, "start.ckpt") == "start.ckpt"  # a first launch
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"x")
    (folder / ".last.ckpt.partial-99").write_bytes(b"half")  # a save killed halfway
    assert preemption.resume_checkpoint(tmp_path) == str(folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    # Requeued after starting from start.ckpt: it goes on from its own progress, not back there.
    assert preemption.resume_checkpoint(tmp_path, "start.ckpt") == str(folder / "last.ckpt")


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
    scontrol.write_text("#!/bin/sh\necho 'Requested operation is presently disabled' >&2; exit 1\n")
    assert preemption.requeue_slurm_job() is None  # refused (salloc, JobRequeue=0): no traceback


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
    for name, value in {
        "TORCHELASTIC_RUN_ID": "x",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": "0",
        "ROLE_RANK": "0",
        "MASTER_ADDR": "a",
        "MASTER_PORT": "1",
    }.items():
        no_launcher.setenv(name, value)
    assert len(preemption.trainer_plugins()) == 1  # torchrun inside a Slurm job: Lightning finds torchrun


def test_fsdp_config_gives_full_state_dict_checkpoints():
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    from tests.conftest import compose

    strategy = instantiate(compose("train", ["trainer=fsdp", "data.root=/x"]).trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"


def test_random_states_round_trip_by_public_apis():
    """What the Preemption callback saves per rank restores every generator a step draws from."""
    import random

    import numpy as np
    import torch

    from medweave.training.preemption import restore_rng_states, rng_states

    saved = rng_states()
    first = (torch.rand(3), np.random.rand(3), random.random())
    saved["python"] = list(saved["python"])  # as some serialisations hand it back
    restore_rng_states(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all() and first[2] == again[2]
