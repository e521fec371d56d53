"""Fusion: ``forward(embeddings: {modality: [B, D]}, masks: {modality: bool [B]}) -> [B, out_dim]``.

A missing modality (mask False) is normal: its embedding row is zero and must not matter.
"""
