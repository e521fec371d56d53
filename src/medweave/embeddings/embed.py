"""Embed one modality of a prepared cohort cache with a frozen encoder, once per set of inputs."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

from medweave import __version__
from medweave.data import embedding_cache as ec
from medweave.embeddings.frozen import FrozenEncoder
from medweave.errors import MedweaveError
from medweave.folders import content_hash

log = logging.getLogger(__name__)


def pick_device(device: str):
    """``auto``: the GPU when there is one, else the CPU; anything else as torch names it."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise MedweaveError(f"device='{device}': {err}; expected auto, cpu, cuda or cuda:<n>") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise MedweaveError(f"device='{device}': no CUDA device here; expected device=auto or device=cpu")
    return chosen


def embed_cohort(
    encoder: FrozenEncoder,
    prepared: Path,
    root: Path,
    model_path: Path,
    settings: dict,
    out_dir: Path,
    batch_size: int = 32,
    device: str = "auto",
) -> tuple[Path, bool]:
    """(embedding cache folder, whether it was built now) for ``encoder`` over ``prepared``.

    ``settings`` is everything besides the weights and the input that changes the vectors (the
    encoder's config); batch size and device do not enter the key.
    """
    if batch_size < 1:
        raise MedweaveError(f"batch_size={batch_size}: expected a positive integer")
    inputs, present = encoder.inputs(prepared)
    origin = ec.prepared_origin(prepared, root)
    model_hash = content_hash(model_path)
    key_src = {
        "format": ec.FORMAT,
        "modality": encoder.modality,
        "input": ec.array_digest(inputs, present),
        # what the rows stand for when the encoder reads them from the cache itself (ehr_codes)
        "input_identity": getattr(encoder, "input_identity", lambda _: None)(prepared),
        "origin": origin,
        "model": model_hash,
        "settings": settings,
    }
    key = hashlib.blake2b(
        json.dumps(key_src, sort_keys=True, default=str).encode(), digest_size=10
    ).hexdigest()
    out = Path(out_dir).expanduser().resolve() / f"{encoder.modality}-{key}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.with_name(f".{out.name}.lock"))):
        if (out / ec.PROVENANCE).exists():
            log.info("Reusing embedding cache %s (same input, model and settings)", out)
            return out, False
        rows = np.flatnonzero(present)
        if not len(rows):
            raise MedweaveError(
                f"{prepared / 'subjects.npz'}: no subject has {encoder.modality} before prediction_time; "
                "nothing to embed"
            )
        chosen = pick_device(device)
        started = time.perf_counter()
        encoder.load(chosen)
        vectors = _run(encoder, inputs, rows, len(present), batch_size)
        seconds = round(time.perf_counter() - started, 3)
        provenance = {
            "format": ec.FORMAT,
            "medweave": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "modality": encoder.modality,
            "model": {"path": str(model_path), "content_hash": model_hash},
            "settings": settings,
            "pooling": encoder.pooling,
            "width": int(vectors.shape[1]),
            "input": {**origin, "prepared_cache": prepared.name, "digest": key_src["input"]},
            "subjects_embedded": int(len(rows)),
            "run": {"device": str(chosen), "batch_size": batch_size, "seconds": seconds},
            "key": key,
        }
        tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            np.save(tmp / ec.VECTORS, vectors)
            np.save(tmp / ec.PRESENT, present)
            (tmp / ec.PROVENANCE).write_text(json.dumps(provenance, indent=2))  # last: marks it complete
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "Embedded %s of %d subjects in %.1f s on %s -> %s", encoder.modality, len(rows), seconds, chosen, out
    )
    return out, True


def _run(encoder: FrozenEncoder, inputs: np.ndarray, rows: np.ndarray, n: int, batch_size: int) -> np.ndarray:
    """[n, W] float32: embeddings in ``rows``, zeros elsewhere (the data module masks those)."""
    import torch

    vectors = None
    with torch.inference_mode():
        for start in tqdm(
            range(0, len(rows), batch_size), desc=f"embedding {encoder.modality}", unit="batch"
        ):
            take = rows[start : start + batch_size]
            out = encoder(inputs[take]).numpy()
            if vectors is None:
                vectors = np.zeros((n, out.shape[1]), np.float32)
            vectors[take] = out
    bad = np.flatnonzero(~np.isfinite(vectors).all(1))
    if len(bad):
        raise MedweaveError(
            f"the {encoder.modality} encoder returned NaN or infinite values for {len(bad)} subject(s) "
            f"(first at prepared row {bad[0]}); expected finite embeddings"
        )
    return vectors
