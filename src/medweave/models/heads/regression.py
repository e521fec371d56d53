"""A continuous outcome (e.g. a lab value over the horizon): one output on the z-score scale of
the training targets, so the loss is scale-free; ``score`` gives the value in its own unit."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MetricCollection, R2Score

from medweave.models.heads.linear import LinearHead


class RegressionHead(LinearHead):
    """Args:
    in_dim: width of the fused representation.
    target_mean, target_sd: the training targets' mean and SD (from the prepared cohort).
    dropout: dropout before the output layer.
    """

    kind = "regression"

    def __init__(self, in_dim: int, target_mean: float, target_sd: float, dropout: float = 0.1):
        super().__init__(in_dim, 1, dropout)
        self.target_mean, self.target_sd = float(target_mean), float(target_sd)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        z = (batch["targets"].float() - self.target_mean) / self.target_sd
        return nn.functional.mse_loss(outputs.float(), z)

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float() * self.target_sd + self.target_mean

    def metrics(self) -> MetricCollection:
        return MetricCollection({"r2": R2Score(), "mae": MeanAbsoluteError()})

    def metric_args(self, scores: torch.Tensor, batch: dict) -> tuple:
        return scores, batch["targets"].float()
