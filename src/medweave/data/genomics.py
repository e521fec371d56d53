"""The genomics modality in the prepared cache: alt-allele dosages per subject, standardised with
train-split statistics that travel in the vocabulary."""

from __future__ import annotations

import numpy as np

from medweave.data import contract as c
from medweave.data.readers import vcf
from medweave.errors import MedweaveError


def prepare_genomics(root, subject_ids, train, vocab, out) -> np.ndarray:
    path = c.require_file(root, c.VARIANTS_VCF, "the genomics modality")
    samples, variant_ids, dosages = vcf.read_dosages(path)
    try:
        sample_ids = np.array([int(s) for s in samples], np.int64)
    except ValueError:
        raise MedweaveError(f"{path}: sample names must be subject_ids (integers)") from None
    row = np.clip(np.searchsorted(subject_ids, sample_ids), 0, len(subject_ids) - 1)
    known = subject_ids[row] == sample_ids
    if "variants" in vocab:  # align to the training variant order; unseen variants stay missing
        col = {v: j for j, v in enumerate(variant_ids)}
        take = np.array([col.get(v, -1) for v in vocab["variants"]])
        dosages = np.where(take >= 0, dosages[:, np.maximum(take, 0)], -1).astype(np.int8)
    n = len(subject_ids)
    full = np.full((n, dosages.shape[1]), -1, np.int8)
    full[row[known]] = dosages[known]
    present = np.zeros(n, bool)
    present[row[known]] = True
    if "variants" not in vocab:
        d = full[present & train].astype(np.float32)
        d[d < 0] = np.nan
        mean = np.nan_to_num(np.nanmean(d, axis=0), nan=0.0)
        sd = np.nan_to_num(np.nanstd(d, axis=0), nan=1.0)
        vocab["variants"], vocab["variant_mean"] = variant_ids, mean.round(6).tolist()
        vocab["variant_sd"] = np.where(sd > 1e-6, sd, 1.0).round(6).tolist()
    np.save(out / "genomics.npy", full)
    return present
