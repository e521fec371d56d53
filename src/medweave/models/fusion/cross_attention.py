"""Cross-attention: one modality queries the others."""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentionFusion(nn.Module):
    """The query modality's embedding attends over the other modalities' embeddings (missing ones
    masked out); output = LayerNorm(query + attention) then a feed-forward block. When the query
    modality itself is missing, a learned query token stands in.

    Args:
        modalities: the modalities, in a fixed order.
        dim: width of each modality embedding and of the output.
        query: the modality that asks (default: the first, usually ehr_codes).
        n_heads: attention heads.
        dropout: attention and feed-forward dropout.
    """

    def __init__(
        self,
        modalities: list[str],
        dim: int,
        query: str | None = None,
        n_heads: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.modalities = list(modalities)
        self.query = query or self.modalities[0]
        if self.query not in self.modalities:
            raise ValueError(f"fusion query '{self.query}' is not one of the modalities {self.modalities}")
        self.keys = [m for m in self.modalities if m != self.query]
        self.out_dim = dim
        self.missing_query = nn.Parameter(torch.zeros(dim))
        if self.keys:  # with one modality there is nothing to attend to (and no unused weights for DDP)
            self.key_embedding = nn.Parameter(torch.randn(len(self.keys), dim) * 0.02)
            self.attention = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)
            self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(self, embeddings: dict, masks: dict) -> torch.Tensor:
        q_present = masks[self.query].unsqueeze(-1)
        q = torch.where(q_present, embeddings[self.query], self.missing_query)
        if self.keys:
            kv = torch.stack([embeddings[m] for m in self.keys], 1) + self.key_embedding
            absent = torch.stack([~masks[m] for m in self.keys], 1)
            nothing = absent.all(1, keepdim=True)
            # All keys missing would make attention NaN (also in backward): let such rows see
            # the first key, then drop what they read.
            absent = absent.clone()
            absent[:, :1] &= ~nothing
            attended, _ = self.attention(q.unsqueeze(1), kv, kv, key_padding_mask=absent, need_weights=False)
            attended = torch.where(nothing, 0.0, attended.squeeze(1))
            q = self.norm1(q + attended)
        return self.norm2(q + self.ff(q))
