"""Several yes/no outcomes at once (e.g. each disease within a year): one logit per label."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision


class MultilabelHead(nn.Module):
    """Args:
    in_dim: width of the fused representation.
    labels: label names, one label file each (from the prepared cohort).
    dropout: dropout before the output layer.
    """

    kind = "multilabel"

    def __init__(self, in_dim: int, labels: list[str], dropout: float = 0.1):
        super().__init__()
        self.labels = list(labels)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, len(labels)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs.float(), batch["targets"].float())

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs.float())

    def metrics(self) -> MetricCollection:
        k = len(self.labels)
        return MetricCollection(
            {
                "auroc": MultilabelAUROC(k, average="macro"),
                "auprc": MultilabelAveragePrecision(k, average="macro"),
            }
        )

    def metric_args(self, scores: torch.Tensor, batch: dict) -> tuple:
        return scores, batch["targets"].long()
