"""Training progress that reads well where it lands: a live bar in a terminal, plain log lines in
a file (a Slurm log, nohup, CI), where a redrawn bar becomes one endless line of carriage
returns or a narrow column of wrapped metrics."""

from __future__ import annotations

import logging
import sys
import time

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

log = logging.getLogger("medweave")


def progress_bar(enabled: bool = True, every_seconds: float = 300.0) -> ProgressBar | None:
    """A bar in a terminal, log lines otherwise (configs/callbacks/progress.yaml); None when the
    trainer's progress bar is off (Lightning refuses a progress callback then)."""
    if not enabled:
        return None
    return TerminalBar() if sys.stderr.isatty() else EpochLines(every_seconds)


class TerminalBar(TQDMProgressBar):
    """Lightning's bar without ``v_num`` (an MLflow run id: 32 characters that say nothing)."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class EpochLines(ProgressBar):
    """One line per epoch (train and validation metrics, seconds taken) and, inside an epoch
    longer than ``every_seconds``, a line with the step and the loss that often. An epoch's line
    is written when the next epoch starts or training ends: the module logs the epoch's train
    metrics after the callbacks' epoch-end hooks have run."""

    def __init__(self, every_seconds: float = 300.0):
        super().__init__()
        self.every_seconds = every_seconds
        self._enabled = True
        self._epoch_started = self._last_line = 0.0
        self._pending: int | None = None  # the epoch whose line is still to be written

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write_pending(self, trainer) -> None:
        if self._pending is None or not self._enabled:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k != "train/loss_step"}
        shown = " · ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        seconds = time.monotonic() - self._epoch_started
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        log.info("epoch %d/%s · %s · %.0f s", self._pending + 1, total, shown, seconds)
        self._pending = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._write_pending(trainer)
        self._epoch_started = self._last_line = time.monotonic()
        self._pending = trainer.current_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if self._enabled and now - self._last_line >= self.every_seconds:
            self._last_line = now
            loss = trainer.callback_metrics.get("train/loss_step")
            shown = f" · train/loss_step {float(loss):.4g}" if loss is not None else ""
            log.info(
                "epoch %d · step %d/%s%s",
                trainer.current_epoch + 1,
                batch_idx + 1,
                self.total_train_batches,
                shown,
            )

    def on_train_end(self, trainer, pl_module) -> None:
        self._write_pending(trainer)
