"""Binary outcome (e.g. onset within a horizon): one logit, BCE loss, probability score."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision


class BinaryHead(nn.Module):
    """Args:
    in_dim: width of the fused representation.
    dropout: dropout before the output layer.
    """

    kind = "binary"

    def __init__(self, in_dim: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs, batch["targets"].float())

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs)

    def metrics(self) -> MetricCollection:
        return MetricCollection({"auroc": BinaryAUROC(), "auprc": BinaryAveragePrecision()})

    def metric_args(self, scores: torch.Tensor, batch: dict) -> tuple:
        return scores, batch["targets"].long()
