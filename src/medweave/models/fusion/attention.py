"""Attention over modality tokens: a summary token attends to the modalities a subject has."""

from __future__ import annotations

import torch
from torch import nn

from medweave.models.fusion._masking import stack


class ModalityTokens(nn.Module):
    """[summary] + each modality's token plus its learned modality embedding: [B, M, D] -> [B, 1+M, D].

    A module of its own, fed one tensor, so that DP-SGD can compute each subject's gradient of
    these parameters (training/dp_modules.py gives Opacus the formula).
    """

    def __init__(self, n_modalities: int, dim: int):
        super().__init__()
        self.summary = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_embedding = nn.Parameter(torch.randn(n_modalities, dim) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        summary = self.summary.expand(tokens.shape[0], -1, -1)
        return torch.cat([summary, tokens + self.modality_embedding], 1)


class AttentionFusion(nn.Module):
    """Tokens = [summary] + one per modality (+ a learned modality embedding); missing
    modalities are masked out of attention, so they contribute nothing.

    Args:
        modalities: the modalities, in a fixed order.
        dim: width of each modality embedding and of the output.
        n_heads: attention heads.
        n_layers: transformer layers over the modality tokens.
        dropout: attention and feed-forward dropout.
    """

    def __init__(
        self, modalities: list[str], dim: int, n_heads: int = 4, n_layers: int = 1, dropout: float = 0.1
    ):
        super().__init__()
        self.modalities = list(modalities)
        self.out_dim = dim
        self.tokens = ModalityTokens(len(self.modalities), dim)
        layer = nn.TransformerEncoderLayer(
            dim, n_heads, 2 * dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self._register_load_state_dict_pre_hook(_older_keys)

    def forward(self, embeddings: dict, masks: dict) -> torch.Tensor:
        tokens, present = stack(embeddings, masks, self.modalities)
        batch = tokens.shape[0]
        tokens = self.tokens(tokens)
        padding = torch.cat([present.new_zeros(batch, 1), ~present], 1)  # summary always visible
        return self.norm(self.transformer(tokens, src_key_padding_mask=padding)[:, 0])


def _older_keys(state_dict, prefix, *args) -> None:
    """Checkpoints from before ModalityTokens held its parameters on the fusion itself."""
    for name in ("summary", "modality_embedding"):
        if prefix + name in state_dict:
            state_dict[f"{prefix}tokens.{name}"] = state_dict.pop(prefix + name)
