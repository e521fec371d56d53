"""Genotype dosages through a regularised MLP."""

from __future__ import annotations

import torch
from torch import nn


class GenomicsEncoder(nn.Module):
    """Standardised alt-allele dosages [B, V] -> [B, dim] through a narrow bottleneck.

    Variants far outnumber genomes in most cohorts, so the first layer is a few linear scores
    (polygenic-score-like, additive in dosage) before any non-linearity.

    Args:
        n_variants: number of variants (given by the prepared cohort).
        dim: output embedding width.
        hidden: width of the linear bottleneck.
        input_dropout: dropout on dosages; shrinks per-variant weights as ridge regression does.
        dropout: dropout after the bottleneck.
    """

    def __init__(
        self,
        n_variants: int,
        dim: int = 64,
        hidden: int = 16,
        input_dropout: float = 0.5,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.out_dim = dim
        self.net = nn.Sequential(
            nn.Dropout(input_dropout),
            nn.Linear(n_variants, hidden),
            nn.Dropout(dropout),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, dosages: torch.Tensor) -> torch.Tensor:
        return self.net(dosages)
