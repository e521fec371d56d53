"""Low-rank multimodal tensor fusion (Liu et al., 2018, "LMF")."""

from __future__ import annotations

import torch
from torch import nn


class LowRankTensorFusion(nn.Module):
    """The outer product of [x_m; 1] over modalities, mapped to ``hidden``, without building it: with
    rank-R factors per modality, output = sum_r prod_m ([x_m; 1] W_m^r) + b. The appended 1 lets
    every subset of modalities (and each one alone) contribute; a missing modality is [0; 1], so
    only its constant term enters the product.

    Args:
        modalities: the modalities, in a fixed order.
        dim: width of each modality embedding.
        hidden: output width.
        rank: number of rank-one factors.
    """

    def __init__(self, modalities: list[str], dim: int, hidden: int = 64, rank: int = 4):
        super().__init__()
        self.modalities = list(modalities)
        self.out_dim = hidden
        self.factors = nn.ParameterDict(
            {
                m: nn.Parameter(torch.randn(rank, dim + 1, hidden) * 0.25 * (dim + 1) ** -0.5)
                for m in self.modalities
            }
        )
        with torch.no_grad():  # each factor starts near 1 + small, so the product over modalities
            for factor in self.factors.values():  # neither vanishes nor explodes
                factor[:, -1, :] += 1.0
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, embeddings: dict, masks: dict) -> torch.Tensor:
        product = None
        for m in self.modalities:
            x = embeddings[m] * masks[m].unsqueeze(-1).to(embeddings[m].dtype)
            x1 = torch.cat([x, torch.ones_like(x[:, :1])], -1)  # [B, D + 1]
            projected = torch.einsum("bd,rdh->brh", x1, self.factors[m])  # [B, R, H]
            product = projected if product is None else product * projected
        fused = torch.einsum("brh,r->bh", product, self.rank_weights) + self.bias
        return self.norm(fused)
