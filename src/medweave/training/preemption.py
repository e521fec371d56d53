"""Preemption and time limits: save at the next batch boundary, requeue, resume exactly there.

Slurm warns a job before it is preempted or reaches its time limit (``--signal=USR1@<s>``).
The handler only raises a flag: saving inside a signal handler could catch the optimizer halfway
through its parameters. Before the next batch, all ranks agree (any rank that saw the signal
counts), write ``last.ckpt`` atomically and leave ``fit`` by raising ``Preempted``; the CLI then
requeues the Slurm job. The restarted job finds that checkpoint and the MLflow run id in the same
output folder, so it continues in the same run, with the same data order (SubjectSampler) and the
same random state per rank, as if it had never stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states

log = logging.getLogger("medweave")

LAST = "last.ckpt"  # the name Lightning's ModelCheckpoint gives its last checkpoint
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", for wrappers that restart on it


class Preempted(Exception):
    """Raised out of ``trainer.fit`` once the checkpoint to resume from is on disk."""

    def __init__(self, checkpoint: Path, step: int):
        super().__init__(f"preempted at optimizer step {step}; checkpoint {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


def resume_checkpoint(output_dir: str | Path, ckpt_path: str | None = None) -> str | None:
    """The checkpoint a run continues from: the one asked for, else its own folder's last one.
    Clears what a save killed halfway left behind (the last whole checkpoint is untouched)."""
    from medweave.training.checkpoint_io import remove_partials

    folder = Path(output_dir) / "checkpoints"
    for leftover in remove_partials(folder):
        log.info("Removed %s, left by a save that was killed", leftover.name)
    if ckpt_path:
        return str(ckpt_path)
    return str(folder / LAST) if (folder / LAST).is_file() else None


def slurm_job() -> str | None:
    """This job's id as scontrol takes it (array tasks as <job>_<task>), or None outside Slurm."""
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> str | None:
    """Put this job back in the queue (it restarts with SLURM_RESTART_COUNT + 1); None outside Slurm."""
    job = slurm_job()
    if job:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True)
    return job


def trainer_plugins() -> list:
    """Atomic checkpoint writes always; under srun, Slurm without Lightning's own requeue (its
    handler saves from inside the signal, mid-step, on each rank on its own)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from medweave.training.checkpoint_io import AtomicCheckpointIO

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


class Preemption(L.Callback):
    """Args:
    dirpath: where ``last.ckpt`` goes (the run's checkpoint folder).
    signals: the signals that mean "stop soon" (names, as in ``--signal=USR1@90``).
    seed: each rank seeds its random state with seed + rank, so that ranks draw different
        dropout masks; a resumed run restores every rank's state instead.
    """

    def __init__(self, dirpath: str, signals: list[str] = ("SIGUSR1",), seed: int = 0):
        self.dirpath, self.seed = Path(dirpath), seed
        self.signals = [signal.Signals[name if name.startswith("SIG") else f"SIG{name}"] for name in signals]
        self.requested, self._saving = False, False
        self._previous: dict = {}
        self._rng_to_restore: list | None = None

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        L.seed_everything(self.seed + trainer.global_rank, workers=True, verbose=False)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_to_restore is None:
            return
        if len(self._rng_to_restore) == trainer.world_size:
            _set_rng_states(self._rng_to_restore[trainer.global_rank])
        else:
            log.warning(
                "Resumed on %d processes, saved on %d: random states start afresh per rank",
                trainer.world_size,
                len(self._rng_to_restore),
            )
        self._rng_to_restore = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        # Checked before a batch rather than after one: by now the last step's metrics are logged,
        # and the batch fetched here is not yet trained on (the resumed run fetches it again).
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = self.dirpath / LAST
        self._saving = True
        try:
            trainer.save_checkpoint(path)
        finally:
            self._saving = False
        raise Preempted(path, trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._saving:
            # Lightning counts the logging step on when it resumes, as if every checkpoint were saved
            # after a batch but before that count; this one is saved after it.
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1

    def state_dict(self) -> dict:
        """Every rank's random state (a collective: all ranks save checkpoints together)."""
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            return {"rng": gathered}
        return {"rng": [states]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict.get("rng")
