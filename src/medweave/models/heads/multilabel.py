"""Several yes/no outcomes at once (e.g. each disease within a year): one logit per label."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision

from medweave.models.heads.linear import LinearHead


class MultilabelHead(LinearHead):
    """Args:
    in_dim: width of the fused representation.
    labels: label names, one label file each (from the prepared cohort).
    dropout: dropout before the output layer.
    """

    kind = "multilabel"

    def __init__(self, in_dim: int, labels: list[str], dropout: float = 0.1):
        if len(labels) < 2:
            raise ValueError(
                f"labels={labels}: a multilabel task needs at least 2 label files (else: binary)"
            )
        super().__init__(in_dim, len(labels), dropout)
        self.labels = list(labels)

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
