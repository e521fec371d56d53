"""ResumableMLFlowLogger: one MLflow run per training, however often its process is replaced."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, plus: the run id is kept in ``run_id_file`` (in the run's output
    folder) and a process that starts in that folder continues that run; a preempted run is
    KILLED, not FAILED, until then. With ``synchronous=False``, metrics and params go through
    MLflow's asynchronous queue until the logger is finalized, which waits for all of them.
    ``log_tested`` and ``register_as``: what training does with the tested checkpoint
    (tracking/models.py)."""

    def __init__(
        self,
        *args,
        run_id_file: str | None = None,
        log_tested: bool = True,
        register_as: str | None = None,
        **kwargs,
    ):
        run_id = None
        if run_id_file and Path(run_id_file).is_file():
            run_id = Path(run_id_file).read_text().strip() or None
        super().__init__(*args, run_id=run_id, **kwargs)
        self.run_id_file, self.resumed, self.preempted = run_id_file, run_id is not None, False
        self.log_tested, self.register_as = log_tested, register_as  # tracking/models.py

    def reopen(self) -> None:
        """Rank 0, before fitting a resumed run: it is running again."""
        self.experiment.update_run(self.run_id, status="RUNNING")

    def record_run_id(self) -> None:
        """Rank 0, once the run is set up: later processes in this folder continue it."""
        if self.run_id_file:
            Path(self.run_id_file).parent.mkdir(parents=True, exist_ok=True)
            Path(self.run_id_file).write_text(f"{self.run_id}\n")

    def mark_preempted(self) -> None:
        self.preempted = True
        self.experiment.set_terminated(self.run_id, "KILLED")

    def finalize(self, status: str = "success") -> None:
        # Lightning finalizes every interrupted fit as "failed", Preempted included. Ending the run
        # (MlflowClient.set_terminated) first waits for every queued asynchronous write.
        super().finalize("KILLED" if self.preempted and status == "failed" else status)
        # Nothing would wait for what is logged after this (the evaluation's CIs after testing, in a
        # process that goes on): from now on each call is written before it returns.
        self._log_batch_kwargs = {}
