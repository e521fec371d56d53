"""Each modality's contribution to each subject's score: exact Shapley values over subsets of
modalities, a subset being "these modalities present, the rest masked as missing".

v(S) = the head's score with only S present. A modality's Shapley value averages its marginal
contribution v(S + m) - v(S) over all orders; values sum to v(all present) - v(none). Modalities a
subject lacks contribute exactly 0. Encoders run once per batch; only fusion and head run per
subset, 2^M times (M <= 5 keeps this cheap).
"""

from __future__ import annotations

from itertools import combinations
from math import factorial

import numpy as np
import torch


@torch.no_grad()
def modality_shapley(model, loader, max_subjects: int | None = None) -> dict[str, np.ndarray]:
    """{"phi": [N, M], "empty": [N] (v of no modality), "full": [N], "modalities": [M]}."""
    model.eval()
    names = list(model.encoders)
    m = len(names)
    if m > 5:
        raise ValueError(f"exact Shapley over {m} modalities needs {2**m} passes; at most 5 supported")
    phis, empties, fulls, seen = [], [], [], 0
    for batch in loader:
        batch = model.transfer_batch_to_device(batch, model.device, 0)
        embeddings = model.embed(batch)
        present = torch.stack([batch[f"{n}_mask"].bool() for n in names], 1)  # [B, M]
        value = {}
        for size in range(m + 1):
            for subset in combinations(range(m), size):
                keep = torch.zeros(m, dtype=torch.bool, device=present.device)
                keep[list(subset)] = True
                masks = dict(zip(names, (present & keep).unbind(1), strict=True))
                value[subset] = model.head.score(model.fuse(embeddings, masks)).float()
        phi = torch.zeros(present.shape, dtype=torch.float32, device=present.device)
        for j in range(m):
            others = [k for k in range(m) if k != j]
            for size in range(m):
                weight = factorial(size) * factorial(m - size - 1) / factorial(m)
                for subset in combinations(others, size):
                    phi[:, j] += weight * (value[tuple(sorted((*subset, j)))] - value[subset])
        phis.append(phi.cpu().numpy())
        empties.append(value[()].cpu().numpy())
        fulls.append(value[tuple(range(m))].cpu().numpy())
        seen += len(phi)
        if max_subjects and seen >= max_subjects:
            break
    cut = slice(0, max_subjects)
    return {
        "phi": np.concatenate(phis)[cut],
        "empty": np.concatenate(empties)[cut],
        "full": np.concatenate(fulls)[cut],
        "modalities": np.array(names),
    }
