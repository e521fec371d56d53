"""The embedding cache: what medweave-embed writes and the data module serves in place of a modality.

    <out_dir>/<modality>-<key>/
        embeddings.npy   float32 [N, W]: row i belongs to row i of the prepared cache's
                         subjects.npz (subjects sorted by ID); zeros where the modality is absent
        present.npy      bool [N]: True = the subject has the modality, so its row is an embedding
        provenance.json  the model (path, content hash), the embed settings, when, which medweave,
                         and what it was made from: the cohort fingerprint, the label file (whose
                         prediction times bound the input) and a digest of the row order

The key hashes the prepared input (the modality's arrays), the model's content and the embed
settings, plus the cohort fingerprint, so a second run over the same inputs reuses the folder and
any change makes a new one. No file holds subject IDs: rows go by position, checked against the
prepared cache through a one-way digest of its row order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medweave.errors import MedweaveError

FORMAT = 1  # bump when what is written changes
VECTORS, PRESENT, PROVENANCE = "embeddings.npy", "present.npy", "provenance.json"


def array_digest(*arrays: np.ndarray) -> str:
    """blake2b of arrays' shapes, types and bytes (memory-mapped ones are read in slices)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        rows = max(1, (64 << 20) // max(1, array[:1].nbytes))
        for start in range(0, len(array), rows):
            digest.update(np.ascontiguousarray(array[start : start + rows]).tobytes())
    return digest.hexdigest()


def rows_digest(prepared: Path) -> str:
    """A one-way digest of the prepared cache's rows (subject, split and prediction time per row):
    enough to tell whether two caches hold the same samples in the same order, cut at the same
    times (so that data.label_rows or data.labels_dir cannot change under an embedding), without
    writing an ID."""
    subjects = np.load(Path(prepared) / "subjects.npz")
    return array_digest(
        subjects["subject_id"].astype(np.int64),
        subjects["split"].astype(np.int8),
        subjects["prediction_time"].astype(np.int64),
    )


def prepared_origin(prepared: Path, root: Path | None = None) -> dict:
    """Which cohort, label file and rows a prepared cache holds (what an embedding must match)."""
    from medweave.data.fingerprint import cohort_fingerprint
    from medweave.data.prepare import MANIFEST

    manifest = json.loads((Path(prepared) / MANIFEST).read_text())
    fingerprint = manifest.get("cohort")
    if fingerprint is None:  # a cache from before the manifest named its cohort
        if root is None:
            raise MedweaveError(f"{prepared / MANIFEST}: no cohort fingerprint; prepare the cohort again")
        fingerprint = cohort_fingerprint(Path(root))
    config = manifest["config"]
    subjects = np.load(Path(prepared) / "subjects.npz")
    return {
        "cohort_fingerprint": fingerprint,
        "label_file": (list(config.get("label_tasks") or []) or [config["task"]])[0],
        "rows": int(len(subjects["subject_id"])),
        "rows_digest": rows_digest(prepared),
    }


@dataclass
class EmbeddingCache:
    """An opened embedding cache; the vectors are memory-mapped lazily, once per process."""

    folder: Path
    modality: str
    width: int
    present: np.ndarray
    provenance: dict
    _vectors: np.ndarray | None = field(default=None, repr=False)

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = np.load(self.folder / VECTORS, mmap_mode="r")
        return self._vectors

    def __getstate__(self):  # DataLoader workers re-open the memory map instead of pickling it
        return {**self.__dict__, "_vectors": None}


def open_cache(folder: str | Path, modality: str, prepared: Path, root: Path) -> EmbeddingCache:
    """The embedding cache at ``folder``, refused unless it was made for the rows of ``prepared``
    (the same cohort, label file and subjects in the same order), so an embedding can never be
    served for another subject or come from data after this task's prediction times."""
    folder = Path(folder).expanduser().resolve()
    where = f"data.embeddings.{modality}='{folder}'"
    if not folder.is_dir():
        raise MedweaveError(
            f"{where} does not exist or is not a folder; expected an embedding cache written by "
            f"medweave-embed ({VECTORS}, {PRESENT}, {PROVENANCE})"
        )
    missing = [n for n in (VECTORS, PRESENT, PROVENANCE) if not (folder / n).is_file()]
    if missing:
        raise MedweaveError(
            f"{where}: missing {missing}; expected an embedding cache written by medweave-embed "
            f"({VECTORS}, {PRESENT}, {PROVENANCE})"
        )
    provenance = json.loads((folder / PROVENANCE).read_text())
    made, here = provenance.get("input", {}), prepared_origin(prepared, root)
    faults = []
    if provenance.get("format") != FORMAT:
        faults.append(f"format {provenance.get('format')} (expected {FORMAT}: embed again)")
    if provenance.get("modality") != modality:
        faults.append(f"modality '{provenance.get('modality')}' (expected '{modality}')")
    if made.get("cohort_fingerprint") != here["cohort_fingerprint"]:
        faults.append(
            f"cohort_fingerprint {made.get('cohort_fingerprint')} (expected {here['cohort_fingerprint']}, "
            f"the cohort at data.root={root}: it was embedded from another cohort or an older copy)"
        )
    if made.get("label_file") != here["label_file"]:
        faults.append(
            f"label_file '{made.get('label_file')}' (expected '{here['label_file']}': its notes and "
            "images were cut at another task's prediction times)"
        )
    if (made.get("rows"), made.get("rows_digest")) != (here["rows"], here["rows_digest"]):
        faults.append(
            f"rows {made.get('rows')} with digest {made.get('rows_digest')} (expected {here['rows']} "
            f"rows with digest {here['rows_digest']}: other subjects, or another order)"
        )
    if faults:
        raise MedweaveError(
            f"{where}: {folder / PROVENANCE} does not fit this run: {'; '.join(faults)}. Embed this "
            f"cohort and task: medweave-embed data.root={root} task={here['label_file']} modality={modality} "
            f"model_path={provenance.get('model', {}).get('path', '<model>')}"
        )
    vectors = np.load(folder / VECTORS, mmap_mode="r")
    present = np.load(folder / PRESENT)
    if vectors.ndim != 2 or len(vectors) != here["rows"] or present.shape != (here["rows"],):
        raise MedweaveError(
            f"{folder / VECTORS}: shape {vectors.shape} with {PRESENT} {present.shape}; expected "
            f"[{here['rows']}, width] and [{here['rows']}] (one row per prepared subject)"
        )
    return EmbeddingCache(folder, modality, int(vectors.shape[1]), present.astype(bool), provenance)
