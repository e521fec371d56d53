"""What the batch and the encoder see: the configured sources concatenated into one float vector."""

from __future__ import annotations

import numpy as np

from medweave.data.genomics.options import ARRAYS


def sources_of(vocab: dict) -> list[str]:
    return vocab.get("genomics_sources", ["variants"])


def width(vocab: dict) -> int:
    """Length of the genomics vector: variants, PCs, scores, genes, embedding values (SOURCES order)."""
    sizes = {
        "variants": lambda: len(vocab["variants"]),
        "pcs": lambda: vocab["pca"]["k"],
        "pgs": lambda: len(vocab["pgs"]),
        "expression": lambda: len(vocab["genes"]),
        "embeddings": lambda: vocab["embedding_dim"],
    }
    return sum(sizes[s]() for s in sources_of(vocab))


def features(arrays: dict[str, np.ndarray], vocab: dict, rows: np.ndarray) -> np.ndarray:
    """float32 [B, width(vocab)]: the sources concatenated; 0 where a call or a source is missing."""
    parts = []
    for source in sources_of(vocab):
        a = arrays[ARRAYS[source]][rows]
        if source == "variants":
            d = a.astype(np.float32)
            scale = vocab.get("dosage_scale", 1)
            mean = np.asarray(vocab["variant_mean"], np.float32)
            z = (d / scale - mean) / np.asarray(vocab["variant_sd"], np.float32)
            a = np.where(d < 0, 0.0, z)
        parts.append(np.asarray(a, np.float32))
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
