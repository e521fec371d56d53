"""EHR codes of a cohort: map every unit of shards (shards.py), reduce the vocabulary (vocab.py),
and index where each labelled subject's events live (cache.py).

The cache shards live in ``<cache_dir>/ehr/`` keyed by what they depend on (not by the
vocabulary or other modalities), so tasks that share labels, ablation arms and evaluations with a
checkpoint's vocabulary share them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data.ehr import cache, events, shards, vocab
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

STORE = "ehr"  # under cache_dir


def prepare_codes(
    root: Path,
    out: Path,
    labelled: shards.Labelled,
    units: list[list[Path]],
    max_events: int,
    min_subjects: int,
    lenient: bool,
    fitted: dict,
    workers: int = 1,
    keep_codes: tuple[str, ...] = (),
) -> np.ndarray:
    """Build (or reuse) the cache shards, fit the code vocabulary into ``fitted`` unless it is
    there, and write the index into ``out``; returns which labelled subjects have code events."""
    store = out.parent / STORE
    store.mkdir(exist_ok=True)
    folders = shards.run_units(root, units, labelled, max_events, lenient, store, workers)
    infos = [json.loads((f / shards.DONE).read_text()) for f in folders]
    if not any(i["read"] for i in infos):
        raise MedweaveError(f"cohort '{root}': no event shard under {c.EVENTS_DIR}/ could be read")
    events.report(sum(i.get("later", 0) for i in infos), sum(i.get("born_later", 0) for i in infos))
    skipped = Counter()
    for i in infos:
        skipped.update(i["skipped"])
    for what, count in skipped.items():  # lenient mode: said again here, as workers log apart
        log.warning("skipped %d: %s (lenient mode)", count, what)
    if "codes" not in fitted:
        fitted.update(vocab.fit_codes(folders, min_subjects, keep_codes))
    index = np.full((len(labelled.subject_ids), 2), -1, np.int64)
    for s, folder in enumerate(folders):
        if (folder / "subject_row.npy").is_file():
            rows = np.load(folder / "subject_row.npy")
            index[rows, 0], index[rows, 1] = s, np.arange(len(rows))
    cache.write_index(out, folders, index)
    return index[:, 0] >= 0
