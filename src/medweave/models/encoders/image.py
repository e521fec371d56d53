"""Images through a MONAI network used as a feature extractor."""

from __future__ import annotations

import torch
from torch import nn

from medweave.errors import MedweaveError


class ImageEncoder(nn.Module):
    """A backbone that returns pooled features (e.g. MONAI ``ResNet(feed_forward=False)``; 2D or
    3D by its ``spatial_dims``), projected to ``dim``.

    Args:
        backbone: the network, built by Hydra from its own config.
        feature_dim: width of the backbone's pooled output.
        dim: output embedding width.
        channels_last: 2D backbones only: keep weights and images in NHWC memory order, which
            tensor-core convolution kernels (bf16 on GPU) read without a transpose; the same maths.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 64, channels_last: bool = False):
        super().__init__()
        self.out_dim = dim
        self.backbone = backbone
        self.project = nn.Linear(feature_dim, dim)
        self.channels_last = channels_last
        if channels_last:
            if not any(isinstance(m, nn.Conv2d) for m in backbone.modules()):
                raise MedweaveError(
                    "model.encoders.image.channels_last=true is for 2D backbones (spatial_dims: 2), "
                    f"but {type(backbone).__name__} has no 2D convolution; set channels_last: false"
                )
            backbone.to(memory_format=torch.channels_last)  # 4D weights only; Module.to(device) keeps it

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.project(self.backbone(images).flatten(1))
