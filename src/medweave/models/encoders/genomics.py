"""The genomics vector (dosages, PCs, polygenic scores, expression, embeddings) through a regularised MLP."""

from __future__ import annotations

import torch
from torch import nn


class GenomicsEncoder(nn.Module):
    """The genomics vector [B, F] -> [B, dim] through a narrow bottleneck.

    F is, in this order, whichever of data.genomics.sources the cohort was prepared with
    (data/genomics/): standardised alt-allele dosages of the variants that passed QC, principal
    components (unit variance on train), polygenic scores (z-scored on train), normalised
    expression, external embedding values.

    Variants far outnumber genomes in most cohorts, so the first layer is a few linear scores
    (polygenic-score-like, additive in dosage) before any non-linearity.

    Args:
        n_features: width F of the genomics vector: variants, expression and external
            embeddings as data.genomics.sources configures them (given by the prepared cohort).
        dim: output embedding width.
        hidden: width of the linear bottleneck.
        input_dropout: dropout on the inputs; shrinks per-variant weights as ridge regression does
            (for a few PCs and scores alone, a smaller value keeps more of their signal).
        dropout: dropout after the bottleneck.
    """

    def __init__(
        self,
        n_features: int,
        dim: int = 64,
        hidden: int = 16,
        input_dropout: float = 0.5,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.out_dim = dim
        self.net = nn.Sequential(
            nn.Dropout(input_dropout),
            nn.Linear(n_features, hidden),
            nn.Dropout(dropout),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
