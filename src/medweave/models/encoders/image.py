"""Images through a MONAI network used as a feature extractor."""

from __future__ import annotations

import torch
from torch import nn


class ImageEncoder(nn.Module):
    """A backbone that returns pooled features (e.g. MONAI ``ResNet(feed_forward=False)``; 2D or
    3D by its ``spatial_dims``), projected to ``dim``.

    Args:
        backbone: the network, built by Hydra from its own config.
        feature_dim: width of the backbone's pooled output.
        dim: output embedding width.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 64):
        super().__init__()
        self.out_dim = dim
        self.backbone = backbone
        self.project = nn.Linear(feature_dim, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone(images).flatten(1))
