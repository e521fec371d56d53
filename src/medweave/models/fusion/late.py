"""Late fusion: each modality is read on its own, then averaged over the modalities a subject has."""

from __future__ import annotations

import torch
from torch import nn

from medweave.models.fusion._masking import masked_mean, stack


class LateFusion(nn.Module):
    """A separate MLP per modality, no interaction between modalities, then a masked mean.

    With a linear task head this equals averaging per-modality predictions (logits) over the
    modalities each subject has: the classic late-fusion baseline.

    Args:
        modalities: the modalities, in a fixed order.
        dim: width of each modality embedding.
        hidden: output width.
        dropout: dropout inside each per-modality MLP.
    """

    def __init__(self, modalities: list[str], dim: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.modalities = list(modalities)
        self.out_dim = hidden
        self.per_modality = nn.ModuleDict(
            {
                m: nn.Sequential(
                    nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
                )
                for m in self.modalities
            }
        )

    def forward(self, embeddings: dict, masks: dict) -> torch.Tensor:
        read = {m: self.per_modality[m](embeddings[m]) for m in self.modalities}
        x, present = stack(read, masks, self.modalities)
        return masked_mean(x, present)
