"""What the launcher (Slurm, torchrun, Lightning) tells a process through its environment.

Read before anything heavy is imported: the run folder's name comes from here.
"""

from __future__ import annotations

import os
from datetime import datetime

from medweave.errors import MedweaveError

_NOT_A_STEP = {"4294967290", "4294967291", "4294967292", "4294967293", "4294967294", "4294967295"}


def slurm_job() -> str | None:
    """This job's id as scontrol takes it (array tasks as <job>_<task>), or None outside Slurm."""
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def run_stamp() -> str:
    """The run folder's name: the same for every process of one launch (srun and torchrun start
    each rank on its own, seconds apart) and again after a Slurm requeue, so that all ranks and
    every restart share one folder, one checkpoint and one MLflow run. A second srun in the same
    job (a loop over seeds) is another job step, and gets a folder of its own."""
    if job := slurm_job():
        step = os.environ.get("SLURM_STEP_ID", "0")
        return f"slurm-{job}" if step in _NOT_A_STEP | {"0"} else f"slurm-{job}-step{step}"
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return f"torchrun-{elastic}"
    if elastic == "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MedweaveError(
            "torchrun across nodes needs --rdzv-id=<name>: it names the run folder that all ranks share"
        )
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def global_rank() -> int:
    """This process's rank as its launcher set it (torchrun, srun, or Lightning's own DDP launcher)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    if os.environ.get("NODE_RANK", "0") == "0":
        return int(os.environ.get("LOCAL_RANK", "0"))
    return 0  # another node of Lightning's launcher: its rank needs the device count, unknown here


def rank_suffix() -> str:
    """ "" on global rank 0, ".rank<N>" elsewhere: each rank of a launch logs to its own file."""
    rank = global_rank()
    return "" if rank == 0 else f".rank{rank}"


def loader_workers() -> int:
    """DataLoader workers for this task's CPUs: Slurm's SLURM_CPUS_PER_TASK, else the CPUs this
    process may run on, less one for the training loop itself (configs/hardware/)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    count = int(cpus) if cpus and cpus.isdigit() else len(os.sched_getaffinity(0))
    return max(0, count - 1)
