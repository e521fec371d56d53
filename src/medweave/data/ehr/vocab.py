"""The reduce stage: the EHR vocabulary from the shards' partial counts, fitted on train.

Each cache shard holds, per code it saw, counts over its train subjects (shards.COUNT_COLUMNS).
Subjects never span units, so summing the shards' counts (in unit order: a fixed order of
floating-point sums) gives what one pass over all train events would: a code (and its value
statistics) enters the vocabulary only if ``min_subjects`` train subjects have it, since a code or
a mean that describes one person would travel inside every checkpoint. ``keep`` names codes that
enter whatever their count (a pretrained checkpoint's, which passed its own cut on the pretraining
cohort): fine-tuning on few labels then keeps every code pretraining learnt. Those without enough
valued train subjects for statistics of their own get [0, 1], so their values pass unchanged (the
pretrained encoder bins raw values with its own edges).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def fit_codes(folders: list[Path], min_subjects: int, keep: tuple[str, ...] = ()) -> dict:
    """{"codes": sorted names, "code_stats": {name: [mean, sd]}} from the shards' counts."""
    names, counts = [], []
    for folder in folders:
        if (folder / "codes.json").is_file():
            names.extend(json.loads((folder / "codes.json").read_text()))
            counts.append(np.load(folder / "counts.npy"))
    if not names:
        return {"codes": [], "code_stats": {}}
    unique, inverse = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    total = np.zeros((len(unique), 5))
    np.add.at(total, inverse.reshape(-1), np.concatenate(counts))
    subjects, valued_subjects, valued, value_sum, square = total.T
    count = np.maximum(valued, 1)
    mean = value_sum / count
    sd = np.sqrt(np.maximum(square / count - mean**2, 0))
    enough = subjects >= min_subjects
    kept = (
        np.isin(unique.astype(str), np.asarray(list(keep), dtype=str))
        if keep
        else np.zeros(len(unique), bool)
    )
    fitted = enough & (valued_subjects >= min_subjects)
    stats = {
        str(unique[i]): [round(float(mean[i]), 6), round(float(sd[i]) or 1.0, 6)]
        for i in np.flatnonzero(fitted)
    }
    stats |= {str(unique[i]): [0.0, 1.0] for i in np.flatnonzero(kept & ~fitted & (valued > 0))}
    return {"codes": sorted(str(unique[i]) for i in np.flatnonzero(enough | kept)), "code_stats": stats}
