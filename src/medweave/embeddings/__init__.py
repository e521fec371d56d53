"""Frozen pretrained encoders run once over a modality of a prepared cohort cache.

``medweave-embed`` (cli/embed.py) embeds one modality of the prepared cohort cache with a frozen
model (frozen.py) and writes an embedding cache in the format data/embedding_cache.py defines
(the data module reads it there, so data/ never imports from here);
``data.embeddings.<modality>=<folder>`` makes the data module serve those vectors in place of
the raw modality, and ``model/encoder@model.encoders.<modality>=precomputed`` reads them
(models/encoders/precomputed.py).
"""
