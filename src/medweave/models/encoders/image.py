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
        norm_groups: replace every BatchNorm of the backbone with GroupNorm of this many groups
            (fewer where the channels do not divide): normalisation within each subject, which
            DP-SGD needs (privacy=dp) and which does not depend on the batch size. None: as built.
        channels_last: 2D backbones only: keep weights and images in NHWC memory order, which
            tensor-core convolution kernels (bf16 on GPU) read without a transpose; the same maths.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        dim: int = 64,
        norm_groups: int | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.out_dim = dim
        if norm_groups:
            _group_norm(backbone, norm_groups)
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


class _Copy(nn.Module):
    """Hands on a copy: MONAI's blocks add the residual to the norm's output in place, which the
    per-subject gradient hooks of DP-SGD forbid on a hooked layer's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _group_norm(backbone: nn.Module, groups: int) -> None:
    """BatchNorm -> GroupNorm (+ a copy) in place (MONAI's ResNet ``norm`` reaches only its stem)."""
    import math

    if groups < 1:
        raise MedweaveError(f"model.encoders.*.norm_groups={groups}: expected a positive number of groups")
    batch_norms = [
        (n, m) for n, m in backbone.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    for name, norm in batch_norms:
        parent, _, child = name.rpartition(".")
        channels = norm.num_features
        group_norm = nn.GroupNorm(math.gcd(groups, channels), channels)
        setattr(backbone.get_submodule(parent), child, nn.Sequential(group_norm, _Copy()))
