"""Early fusion by concatenation, with each modality's presence flag as an input."""

from __future__ import annotations

import torch
from torch import nn


class ConcatFusion(nn.Module):
    """Concatenate [embedding * present, present] over modalities, then an MLP.

    Args:
        modalities: the modalities, in a fixed order.
        dim: width of each modality embedding.
        hidden: output width.
        dropout: dropout before the output layer.
    """

    def __init__(self, modalities: list[str], dim: int, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.modalities = list(modalities)
        self.out_dim = hidden
        self.net = nn.Sequential(
            nn.Linear(len(self.modalities) * (dim + 1), hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )

    def forward(self, embeddings: dict, masks: dict) -> torch.Tensor:
        parts = []
        for m in self.modalities:
            present = masks[m].unsqueeze(-1).to(embeddings[m].dtype)
            parts += [embeddings[m] * present, present]
        return self.net(torch.cat(parts, -1))
