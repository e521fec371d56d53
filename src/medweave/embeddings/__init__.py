"""Frozen pretrained encoders run once over a modality, and the embedding cache training reads.

``medweave-embed`` (cli/embed.py) embeds one modality of the prepared cohort cache with a frozen
model (frozen.py) and writes an embedding cache (cache.py); ``data.embeddings.<modality>=<folder>``
makes the data module serve those vectors in place of the raw modality, and
``model/encoder@model.encoders.<modality>=precomputed`` reads them (models/encoders/precomputed.py).
"""
