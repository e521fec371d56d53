"""One of several classes (e.g. which disease comes first): softmax over K logits."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from medweave.models.heads.linear import LinearHead


class MulticlassHead(LinearHead):
    """Args:
    in_dim: width of the fused representation.
    classes: class names, fitted on train (from the prepared cohort).
    dropout: dropout before the output layer.
    """

    kind = "multiclass"

    def __init__(self, in_dim: int, classes: list[str], dropout: float = 0.1):
        if len(classes) < 2:
            raise ValueError(f"classes={classes}: a multiclass task needs at least 2 classes in train")
        super().__init__(in_dim, len(classes), dropout)
        self.classes = list(classes)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.float(), batch["targets"].long())

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs.float(), dim=-1)

    def metrics(self) -> MetricCollection:
        k = len(self.classes)
        return MetricCollection(
            {"auroc": MulticlassAUROC(k, average="macro"), "accuracy": MulticlassAccuracy(k, average="micro")}
        )

    def metric_args(self, scores: torch.Tensor, batch: dict) -> tuple:
        return scores, batch["targets"].long()
