"""External embeddings (one vector per subject from a model outside medweave) and their provenance.

    genomics/embeddings.parquet   subject_id int64, embedding list<float32> (one length for all rows)
    provenance                    model, version, source: in the parquet schema metadata (those keys,
                                  or a "provenance" key holding JSON) or in genomics/embeddings.json

Provenance describes the producing model, never a subject; it is recorded in the cache vocabulary
so that a checkpoint refuses embeddings from another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medweave.data.bad_input import BadInput
from medweave.errors import MedweaveError

PROVENANCE_KEYS = ("model", "version", "source")


@dataclass
class Embeddings:
    subjects: np.ndarray  # int64 [n]
    values: np.ndarray  # float32 [n, dim]
    provenance: dict[str, str]


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def read_provenance(path: Path, schema: pa.Schema) -> dict[str, str]:
    """model, version, source (non-empty strings) from the schema metadata or the JSON sidecar."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    where = f"{path}: schema metadata"
    found = {k: meta[k] for k in PROVENANCE_KEYS if k in meta}
    if "provenance" in meta:
        try:
            found = json.loads(meta["provenance"])
        except ValueError as err:
            raise MedweaveError(f"{where}: key provenance is not JSON ({err})") from None
    if not found and sidecar(path).exists():
        where = str(sidecar(path))
        try:
            found = json.loads(sidecar(path).read_text())
        except ValueError as err:
            raise MedweaveError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(found, dict):
        raise MedweaveError(f"{where}: provenance must be an object with {list(PROVENANCE_KEYS)}")
    missing = [k for k in PROVENANCE_KEYS if not isinstance(found.get(k), str) or not found[k].strip()]
    if missing:
        raise MedweaveError(
            f"{where}: provenance field(s) {missing} missing or empty; expected non-empty strings "
            f"{list(PROVENANCE_KEYS)} in the parquet schema metadata or in {sidecar(path).name}"
        )
    return {k: found[k].strip()[:200] for k in PROVENANCE_KEYS}


def read_embeddings(path: Path, bad: BadInput | None = None) -> Embeddings:
    """Rows of one length (the most common one); other lengths, NaNs and repeated subjects are faults."""
    bad = bad or BadInput()
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise MedweaveError(f"{path}: not readable as parquet ({err})") from None
    provenance = read_provenance(path, table.schema)
    for name in ("subject_id", "embedding"):
        if name not in table.column_names:
            raise MedweaveError(f"{path}: missing column {name}; expected subject_id and embedding")
    emb = table.column("embedding").combine_chunks()
    if not (
        pa.types.is_list(emb.type)
        or pa.types.is_large_list(emb.type)
        or pa.types.is_fixed_size_list(emb.type)
    ):
        raise MedweaveError(f"{path}: column embedding has type {emb.type}; expected list<float32>")
    if not (pa.types.is_floating(emb.type.value_type) or pa.types.is_integer(emb.type.value_type)):
        raise MedweaveError(f"{path}: column embedding has type {emb.type}; expected list<float32>")
    sid = table.column("subject_id")
    if not pa.types.is_integer(sid.type):
        raise MedweaveError(f"{path}: column subject_id has type {sid.type}; expected int64")
    ids = sid.fill_null(-1).to_numpy().astype(np.int64)
    lengths = pc.list_value_length(emb).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if not (lengths > 0).any():
        raise MedweaveError(f"{path}: every embedding is empty or null; expected list<float32> vectors")
    dim = int(np.bincount(lengths[lengths > 0]).argmax())
    keep = np.ones(len(ids), bool)

    def drop(mask, field, expected):
        rows = np.flatnonzero(mask & keep)
        if len(rows):
            bad.fault(path, f"row {rows[0]}, field {field}", expected, count=len(rows))
            keep[rows] = False

    drop(lengths != dim, "embedding", f"embedding has another length; expected {dim} values like most rows")
    drop(ids < 0, "subject_id", "subject_id is null")
    flat = pc.list_flatten(emb.filter(pa.array(keep))).cast(pa.float32()).fill_null(np.nan)
    values = np.full((len(ids), dim), np.nan, np.float32)
    values[keep] = flat.to_numpy(zero_copy_only=False).reshape(-1, dim)
    drop(
        ~np.isfinite(values).all(axis=1),
        "embedding",
        "embedding holds NaN or infinite values; expected finite",
    )
    _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    drop(counts[inverse] > 1, "subject_id", "subject_id already listed; expected one embedding per subject")
    return Embeddings(ids[keep], values[keep], provenance)
