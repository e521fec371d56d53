"""Gated multimodal units (Arevalo et al., 2017): learned, per-subject weights over modalities."""

from __future__ import annotations

import torch
from torch import nn

from medweave.models.fusion._masking import stack


class GatedFusion(nn.Module):
    """h_m = tanh(W_m x_m); gates z = softmax over present modalities of a score computed from all
    of them; output = sum_m z_m h_m. A missing modality gets gate 0.

    Args:
        modalities: the modalities, in a fixed order.
        dim: width of each modality embedding.
        hidden: output width.
    """

    def __init__(self, modalities: list[str], dim: int, hidden: int = 64):
        super().__init__()
        self.modalities = list(modalities)
        self.out_dim = hidden
        self.transform = nn.ModuleDict({m: nn.Linear(dim, hidden) for m in self.modalities})
        self.gate = nn.Linear(len(self.modalities) * (dim + 1), len(self.modalities))

    def forward(self, embeddings: dict, masks: dict) -> torch.Tensor:
        x, present = stack(embeddings, masks, self.modalities)  # [B, M, D], [B, M]
        h = torch.stack([torch.tanh(self.transform[m](embeddings[m])) for m in self.modalities], 1)
        gate_in = torch.cat([x * present.unsqueeze(-1), present.to(x.dtype).unsqueeze(-1)], -1).flatten(1)
        scores = self.gate(gate_in).masked_fill(~present, torch.finfo(x.dtype).min)
        # Finite fill, then zero the absent: a subject with no modality gets all-zero gates, no NaN.
        z = torch.softmax(scores, -1) * present
        return (z.unsqueeze(-1) * h).sum(1)
