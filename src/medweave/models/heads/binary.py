"""Binary outcome (e.g. onset within a horizon): one logit, BCE loss, probability score."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from medweave.models.heads.linear import LinearHead


class BinaryHead(LinearHead):
    """Args:
    in_dim: width of the fused representation.
    dropout: dropout before the output layer.
    """

    kind = "binary"

    def __init__(self, in_dim: int, dropout: float = 0.1):
        super().__init__(in_dim, 1, dropout)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs, batch["targets"].float())

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"auroc": BinaryAUROC(), "auprc": BinaryAveragePrecision()})

    def metric_args(self, scores: torch.Tensor, batch: dict) -> tuple:
        return scores, batch["targets"].long()
