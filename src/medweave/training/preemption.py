"""Preemption and time limits: save at the next batch boundary, requeue, resume exactly there.

Slurm warns a job before it is preempted or reaches its time limit (``--signal=USR1@<s>``).
The handler only raises a flag: saving inside a signal handler could catch the optimizer halfway
through its parameters. Before the next batch, all ranks agree (any rank that saw the signal
counts) and write ``last.ckpt`` atomically; rank 0 marks the MLflow run KILLED and requeues the
Slurm job while the others wait for it (srun would otherwise kill rank 0 as soon as they exit);
then every rank leaves by raising ``Preempted``. The restarted job finds that checkpoint and the
MLflow run id in the same output folder, so it continues in the same run, with the same data
order (SubjectSampler) and the same random state per rank, as if it had never stopped.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch

from medweave.launch import slurm_job

log = logging.getLogger("medweave")

LAST = "last.ckpt"  # the name Lightning's ModelCheckpoint gives its last checkpoint
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", for wrappers that restart on it


class Preempted(Exception):
    """Raised out of training once the checkpoint to resume from is on disk."""

    def __init__(self, checkpoint: Path, step: int, job: str | None):
        then = (
            f"requeueing Slurm job {job}: it resumes from there in the same MLflow run"
            if job
            else f"resume: run the same command with hydra.run.dir={checkpoint.parent.parent}"
        )
        super().__init__(f"preempted at optimizer step {step}; checkpoint {checkpoint}; {then}")
        self.checkpoint, self.step, self.job = checkpoint, step, job


def resume_checkpoint(output_dir: str | Path, ckpt_path: str | None = None) -> str | None:
    """The checkpoint a run continues from: its own folder's last one if there is one (a requeued
    run started from ``ckpt_path`` must not start from there again), else ``ckpt_path``.
    Clears what a save killed halfway left behind (the last whole checkpoint is untouched)."""
    from medweave.training.checkpoint_io import remove_partials

    folder = Path(output_dir) / "checkpoints"
    for leftover in remove_partials(folder):
        log.info("Removed %s, left by a save that was killed", leftover.name)
    if (folder / LAST).is_file():
        return str(folder / LAST)
    return str(ckpt_path) if ckpt_path else None


def requeue_slurm_job() -> str | None:
    """Put this job back in the queue (it restarts with SLURM_RESTART_COUNT + 1). None outside
    Slurm, or when Slurm refuses (an interactive allocation, JobRequeue=0): the checkpoint stays."""
    job = slurm_job()
    if not job:
        return None
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        log.warning("Could not requeue Slurm job %s: %s", job, getattr(err, "stderr", "") or err)
        return None
    return job


def trainer_plugins() -> list:
    """Atomic checkpoint writes always; under srun (not torchrun inside a Slurm job), Slurm
    without Lightning's own requeue (its handler saves from inside the signal, mid-step, on each
    rank on its own)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from medweave.training.checkpoint_io import AtomicCheckpointIO

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


class Preemption(L.Callback):
    """Args:
    dirpath: where ``last.ckpt`` goes (the run's checkpoint folder).
    signals: the signals that mean "stop soon" (names, as in ``--signal=USR1@90``).

    ``listening()`` installs the handlers for a whole training command (preparing the cohort,
    fitting, testing); a signal outside fitting stops at the next ``stop_if_requested``.
    """

    def __init__(self, dirpath: str, signals: list[str] = ("SIGUSR1",)):
        self.dirpath = Path(dirpath)
        self.signals = [signal.Signals[name if name.startswith("SIG") else f"SIG{name}"] for name in signals]
        self.requested, self._saving = False, False
        self._rng_to_restore: list | None = None

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    @contextmanager
    def listening(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread
            yield self
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in self.signals}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_if_requested(self, trainer: L.Trainer) -> None:
        """Between stages (after fit, after test): requeue and leave if a signal came. The last
        checkpoint is already on disk; a resumed run skips straight past the finished fit."""
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self._leave(trainer, self.dirpath / LAST)

    def _leave(self, trainer: L.Trainer, checkpoint: Path) -> None:
        stop = Preempted(checkpoint, trainer.global_step, slurm_job())
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if hasattr(logger, "mark_preempted"):
                    logger.mark_preempted()
            log.warning("%s", stop)  # before the requeue: Slurm ends the job's processes at once
            requeue_slurm_job()
        # No rank exits before rank 0 has requeued: srun would kill rank 0 as soon as one does.
        trainer.strategy.barrier("preempted")
        raise stop

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_to_restore is None:
            return
        if len(self._rng_to_restore) == trainer.world_size:
            restore_rng_states(self._rng_to_restore[trainer.global_rank])
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
        self._leave(trainer, path)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._saving and trainer.accumulate_grad_batches == 1:
            # Lightning counts the logging step on when it resumes, as if every checkpoint were saved
            # after a batch but before that count; this one is saved after it. The count sits in
            # Lightning's own checkpoint layout (2.x): if a release moves it, resuming still works,
            # with the logging step one ahead.
            loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
            if "_batches_that_stepped" in loop:
                loop["_batches_that_stepped"] -= 1
            else:
                log.warning("This Lightning's checkpoint has no fit_loop._batches_that_stepped to set")

    def state_dict(self) -> dict:
        """Every rank's random state (a collective: all ranks save checkpoints together)."""
        states = rng_states()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states)
            return {"rng": gathered}
        return {"rng": [states]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict.get("rng")


def rng_states() -> dict:
    """This process's random states, by public APIs (the keys Lightning's checkpoints use too)."""
    import random

    import numpy as np

    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])
    np.random.set_state(states["numpy"])
    version, state, gauss = states["python"]  # a list after some (de)serialisations: setstate needs tuples
    random.setstate((version, tuple(state), gauss))
