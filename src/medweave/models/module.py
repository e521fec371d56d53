"""MultimodalModule: runs encoders -> fusion -> head for each step; the maths lives in them."""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torchmetrics import MeanMetric


class MultimodalModule(L.LightningModule):
    """Args:
    encoders: one encoder per modality (keys are modality names).
    fusion: combines the embeddings, told which modalities each subject has.
    head: task head: ``loss(outputs, batch)``, ``score(outputs)`` (higher = more risk),
        ``metrics()`` and ``metric_args(scores, batch)`` (binary.py, survival.py).
    optimizer: partial optimizer, completed with the parameters here.
    scheduler: optional partial LR scheduler, completed with the optimizer.
    modality_dropout: during training, hide each present modality of a subject with this
        probability (never all of them), so the model cannot lean on one modality alone.
    checkpoint_extras: what evaluation needs to rebuild the model and map a cohort the same
        way (resolved config, fitted vocabularies); saved into every checkpoint.
    """

    def __init__(
        self,
        encoders: dict[str, nn.Module],
        fusion: nn.Module,
        head: nn.Module,
        optimizer: partial,
        scheduler: partial | None = None,
        modality_dropout: float = 0.0,
        checkpoint_extras: dict | None = None,
    ):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion, self.head = fusion, head
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.modality_dropout = modality_dropout
        self.checkpoint_extras = checkpoint_extras or {}
        # ModuleDict keys may not shadow nn.Module attributes ("train"), hence the suffix.
        self.metrics = nn.ModuleDict(
            {f"{s}_metrics": head.metrics().clone(prefix=f"{s}/") for s in ("train", "val", "test")}
        )
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in ("train", "val", "test")})

    def _masks(self, batch: dict) -> dict[str, torch.Tensor]:
        masks = {m: batch[f"{m}_mask"] for m in self.encoders}
        if not (self.training and self.modality_dropout > 0 and len(masks) > 1):
            return masks
        present = torch.stack(list(masks.values()), 1)  # [B, M]
        draw = torch.rand(present.shape, device=present.device)
        kept = present & (draw >= self.modality_dropout)
        # A subject who would lose everything keeps one of its modalities, chosen at random.
        one = nn.functional.one_hot(draw.masked_fill(~present, -1).argmax(1), present.shape[1])
        kept = torch.where(kept.any(1, keepdim=True), kept, present & one.bool())
        return dict(zip(masks, kept.unbind(1), strict=True))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.fuse(self.embed(batch), self._masks(batch))

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each modality's embedding [B, D], before masking."""
        return {modality: encoder(batch[modality]) for modality, encoder in self.encoders.items()}

    def fuse(self, embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's output from embeddings and which modalities count as present; attribution
        calls this once per subset of modalities on the same embeddings."""
        hidden = {m: e * masks[m].unsqueeze(-1).to(e.dtype) for m, e in embeddings.items()}
        out = self.head(self.fusion(hidden, masks))
        for m, encoder in self.encoders.items():
            # A pretrained zero-shot prior (models/pretrain/load.py) of the last embed: the logit
            # starts from it, for the subjects whose modality counts as present.
            prior = getattr(encoder, "prior_logit", None)
            if prior is not None:
                out = out + prior.to(out.dtype) * masks[m].to(out.dtype)
        return out

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        outputs = self(batch)
        loss = self.head.loss(outputs, batch)
        if batch.get("placeholder"):
            # A Poisson draw with no subject on this rank (data/sampler.py): the step still runs on
            # every rank, the stand-in subject adds a zero gradient and is not counted.
            return loss * 0.0
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(*self.head.metric_args(self.head.score(outputs.detach()), batch))
        size = len(batch["targets"])
        self.losses[f"{stage}_loss"].update(loss.detach(), size)
        if stage == "train":
            # This rank's value, every step (a curve to watch); the epoch means are logged once
            # per epoch in _log_epoch.
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Loss and metrics once per epoch rather than per step: each self.log call costs tens
        of microseconds per key, which was most of the framework's overhead in evaluation
        (benchmarks/framework_overhead.py). compute() reduces across DDP ranks."""
        loss, metrics = self.losses[f"{stage}_loss"], self.metrics[f"{stage}_metrics"]
        if loss.update_count == 0:  # an epoch with no batches (limit_val_batches=0, empty split)
            return
        name = "train/loss_epoch" if stage == "train" else f"{stage}/loss"
        values = {name: loss.compute(), **metrics.compute()}
        # Already equal on every rank; sync_dist only keeps Lightning from warning under DDP.
        self.log_dict(values, prog_bar=stage == "val", sync_dist=True)
        loss.reset()
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        outputs = self(batch)
        out = {
            "score": self.head.score(outputs),
            "subject_id": batch["subject_id"],
            "target": batch["targets"],
        }
        if "times" in batch:
            out["time"] = batch["times"]
        for modality in self.encoders:  # which modalities the subject had (for availability patterns)
            out[f"present_{modality}"] = batch[f"{modality}_mask"]
        if hasattr(self.head, "survival"):
            out["survival"] = self.head.survival(outputs)
        return out

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        plugin = self.trainer.precision_plugin
        bf16_mixed = isinstance(plugin, MixedPrecision) and plugin.scaler is None
        if gradient_clip_val and bf16_mixed and optimizer.defaults.get("fused"):
            # Lightning refuses to clip for a fused optimizer under mixed precision, in case a gradient
            # scaler unscales inside step(); bf16-mixed has no scaler, so the gradients are the true
            # ones and clipping them here is what Lightning would do for an unfused optimizer.
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["medweave"] = self.checkpoint_extras
