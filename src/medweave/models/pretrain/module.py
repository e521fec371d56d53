"""PretrainModule: backbone + objective per step; checkpoints carry what fine-tuning needs."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

KIND = "pretrain"  # checkpoint["medweave"]["kind"]: what medweave-pretrain saved
FORMAT = 1


class PretrainModule(L.LightningModule):
    """Args:
    backbone: the EventTransformer being pretrained.
    objective: NextEvent or MaskedEvents (its heads train with the backbone).
    optimizer: partial optimizer, completed with the parameters here.
    warmup_steps: linear warm-up of the learning rate over this many steps, then a cosine decay
        to zero over the rest of the run (Lightning's estimate of its optimizer steps).
    checkpoint_extras: saved into every checkpoint under ``medweave``: the vocabulary, the
        backbone's arguments, the objective and the resolved config (models/pretrain/load.py).
    """

    def __init__(
        self,
        backbone: nn.Module,
        objective: nn.Module,
        optimizer: partial,
        warmup_steps: int = 100,
        checkpoint_extras: dict | None = None,
    ):
        super().__init__()
        self.backbone, self.objective = backbone, objective
        self.optimizer_factory, self.warmup_steps = optimizer, warmup_steps
        self.checkpoint_extras = checkpoint_extras or {}
        self.losses = nn.ModuleDict(
            {f"{s}_{p}": MeanMetric() for s in ("train", "val") for p in self.parts()}
        )

    def parts(self) -> tuple[str, ...]:
        return (
            ("loss", "code_loss", "time_loss")
            if self.objective.name == "next_event"
            else ("loss", "code_loss")
        )

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        inputs, targets = self.objective.prepare(batch)
        loss, parts = self.objective.loss(self.backbone(inputs), targets)
        tokens = int(parts.pop("tokens"))
        for name, value in {"loss": loss.detach(), **parts}.items():
            self.losses[f"{stage}_{name}"].update(value, max(tokens, 1))
        if stage == "train":
            self.log(
                "train/loss_step",
                loss,
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                batch_size=len(batch["codes"]),
            )
        return loss

    def _log_epoch(self, stage: str) -> None:
        values = {}
        for name in self.parts():
            metric = self.losses[f"{stage}_{name}"]
            if metric.update_count:
                values[f"{stage}/{name}"] = metric.compute()
                metric.reset()
        if values:
            self.log_dict(values, prog_bar=stage == "val", sync_dist=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        steps = self.trainer.estimated_stepping_batches if self._trainer else 1
        total = max(int(steps), 1) if math.isfinite(steps) else 10**9
        warmup = min(self.warmup_steps, total)

        def rate(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["medweave"] = self.checkpoint_extras
