"""Helpers every fusion shares: stacking modality embeddings and masked averaging."""

from __future__ import annotations

import torch


def stack(embeddings: dict, masks: dict, modalities: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, M, D] embeddings, [B, M] bool present) in the given modality order."""
    return (
        torch.stack([embeddings[m] for m in modalities], 1),
        torch.stack([masks[m] for m in modalities], 1),
    )


def masked_mean(x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over the modality axis of [B, M, D], counting present modalities only (0 if none)."""
    weight = present.unsqueeze(-1).to(x.dtype)
    return (x * weight).sum(1) / weight.sum(1).clamp(min=1)
