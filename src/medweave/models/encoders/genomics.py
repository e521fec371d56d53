"""Genotype dosages through a regularised MLP."""

from __future__ import annotations

import torch
from torch import nn


class GenomicsEncoder(nn.Module):
    """Standardised alt-allele dosages [B, V] -> [B, dim].

    Args:
        n_variants: number of variants (given by the prepared cohort).
        dim: output embedding width.
        hidden: hidden width.
        dropout: dropout on the input and hidden layer (variants far outnumber genomes).
    """

    def __init__(self, n_variants: int, dim: int = 64, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        self.out_dim = dim
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(n_variants, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, dosages: torch.Tensor) -> torch.Tensor:
        return self.net(dosages)
