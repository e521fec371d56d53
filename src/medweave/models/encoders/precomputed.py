"""Embeddings a frozen model made beforehand (medweave-embed), projected to the model's width."""

from __future__ import annotations

import torch
from torch import nn

from medweave.errors import MedweaveError


class PrecomputedEncoder(nn.Module):
    """Stored vectors [B, W] -> [B, dim]: layer norm, dropout, one linear map.

    The data module serves these vectors in place of the raw modality when
    ``data.embeddings.<modality>`` names a folder written by medweave-embed. A frozen model's
    features come on their own scale (mean-pooled transformer states, pooled CNN features); the
    layer norm puts them on one that the projection learns from. Only the projection trains, so a
    frozen model costs one pass over the cohort instead of one per epoch.

    Args:
        embedding_width: W, the stored width (given by the data module from the embedding cache).
        dim: output embedding width.
        expected_width: the width this experiment expects (e.g. 384 for all-MiniLM-L6-v2); a cache
            of another width is refused. None: any.
        dropout: dropout on the stored vectors, the regulariser left when the inputs are fixed.
        source: the embedding cache folder, named in errors (given by the data module).
        config: ignored: the size a debug config sets for the raw text encoder this one replaces.
        backbone: ignored: likewise for the raw image encoder.
        n_layers, n_heads: ignored: likewise for the raw EHR codes encoder.
        raw_inputs: what the data module gives an encoder of the raw modality (vocab_size, ...):
            here only to say that ``data.embeddings.<modality>`` is not set.
    """

    def __init__(
        self,
        embedding_width: int | None = None,
        dim: int = 64,
        expected_width: int | None = None,
        dropout: float = 0.1,
        source: str | None = None,
        config: dict | None = None,
        backbone: dict | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        **raw_inputs,
    ):
        super().__init__()
        if embedding_width is None:
            raise MedweaveError(
                "a precomputed encoder was chosen (model/encoder=precomputed) but the data module serves "
                f"this modality raw{' (' + ', '.join(sorted(raw_inputs)) + ')' if raw_inputs else ''}; "
                "expected data.embeddings.<modality>=<folder written by medweave-embed>"
            )
        if raw_inputs:
            raise MedweaveError(f"PrecomputedEncoder: unexpected arguments {sorted(raw_inputs)}")
        if expected_width is not None and embedding_width != expected_width:
            raise MedweaveError(
                f"{source or 'the embedding cache'}: embeddings are {embedding_width} wide; "
                f"expected_width={expected_width} in the precomputed encoder config (model.encoders.*): "
                "point data.embeddings at a cache made by the intended model, or change expected_width"
            )
        self.out_dim = dim
        self.project = nn.Sequential(
            nn.LayerNorm(embedding_width), nn.Dropout(dropout), nn.Linear(embedding_width, dim)
        )

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        return self.project(vectors)
