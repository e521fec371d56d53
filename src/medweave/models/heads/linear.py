"""The layer every head shares: dropout, then one linear map to the head's outputs."""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """``out_dim`` outputs per subject; a single output comes back as [B], not [B, 1]."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.net(h)
        return out.squeeze(-1) if out.shape[-1] == 1 else out
