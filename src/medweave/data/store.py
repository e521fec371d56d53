"""Shared per-modality stores: each heavy modality's arrays, built once per what they depend on.

A task's prepared folder (prepare.py) holds its samples, labels and vocabulary, and for each
modality only an index into a store under ``<cache_dir>/<modality>/<key>/``. A store's key hashes
only what its arrays depend on: the modality's input files, its own options and, where statistics
are fitted on train (genotype QC, PCA, PGS, the note tokenizer), the train subjects; never the
task's label values, nor other modalities' options. So tasks and ablation arms over the same
inputs read one copy of each modality (60 GB of genotypes once, not once per task), as the EHR
cache shards already are (data/ehr/, ``<cache_dir>/ehr/``).

A store is built by one process under a lock, in a temporary sibling renamed into place, with
``info.json`` written last; concurrent DDP ranks and tasks wait for it and reuse it, and a crash
leaves nothing half-written. Its arrays have one row per stored item (an image of the imaging
index, a subject with a genome); a task links each array with the store row of each sample::

    <prepared>/stores.json        array name -> {"store": folder relative to cache_dir, "fill": value}
    <prepared>/<name>.rows.npy    int64 [N]: the store row of each sample, -1 = none (filled)

``open_arrays`` serves them lazily memory-mapped: row i of a task's array is the store's row
``rows[i]``, or ``fill`` where the sample has none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from filelock import FileLock

from medweave.data.fingerprint import cohort_fingerprint
from medweave.folders import content_hash

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the store layout changes
DONE = "info.json"  # written last: a folder without it is never used
FOLDERS = ("ehr", "text", "image", "volume", "genomics")  # the stores under cache_dir (each room's STORE)
LINKS = "stores.json"


def key(**parts) -> str:
    """A store's folder name: a hash of what its arrays depend on (JSON values)."""
    text = json.dumps({"store": FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=10).hexdigest()


def inputs_fingerprint(root: Path, paths: list[str], mode: str, cache_dir: Path) -> dict:
    """Fingerprints of some of the cohort's files or folders (relative paths; None = absent), as
    data.fingerprint asks: ``quick`` (sizes and times) or ``full`` (bytes, kept per state)."""
    out = {}
    for rel in sorted(set(paths)):
        path = Path(root) / rel
        if path.is_dir():
            out[rel] = cohort_fingerprint(path, mode, cache_dir)
        elif path.is_file():
            st = path.stat()
            out[rel] = content_hash(path) if mode == "full" else f"{st.st_size}:{st.st_mtime_ns}"
        else:
            out[rel] = None
    return out


def build_once(folder: Path, build: Callable[[Path], dict]) -> tuple[dict, bool]:
    """(the store's info, whether it was built now): ``build(tmp)`` writes the arrays into ``tmp``
    and returns the info, unless another process or an earlier run built the store already."""
    folder = Path(folder)
    if (folder / DONE).is_file():
        return json.loads((folder / DONE).read_text()), False
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.with_name(f".{folder.name}.lock"))):
        if (folder / DONE).is_file():  # built while this process waited
            return json.loads((folder / DONE).read_text()), False
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            info = build(tmp)
            (tmp / DONE).write_text(json.dumps(info, sort_keys=True))
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("Built the %s store %s", folder.parent.name, folder.name)
    return info, True


def link(out: Path, name: str, folder: Path, rows: np.ndarray, fill: float = 0) -> None:
    """Serve the store array ``folder/<name>.npy`` as the prepared folder ``out``'s array ``name``."""
    links = json.loads((out / LINKS).read_text()) if (out / LINKS).is_file() else {}
    links[name] = {"store": Path(folder).relative_to(out.parent).as_posix(), "fill": fill}
    (out / LINKS).write_text(json.dumps(links, sort_keys=True))
    np.save(out / f"{name}.rows.npy", np.asarray(rows, np.int64))


def linked(folder: Path) -> dict[str, dict]:
    """The arrays a prepared folder links (name -> {"store", "fill"})."""
    path = Path(folder) / LINKS
    return json.loads(path.read_text()) if path.is_file() else {}


class Indexed:
    """A task's view of a store array: row i is the store's row ``rows[i]`` (``fill`` where -1).

    The store array is memory-mapped on first use in each process (DataLoader workers and DDP
    ranks share the page cache); indexing reads only the rows asked for.
    """

    def __init__(self, path: Path, rows: np.ndarray, fill: float):
        self.path, self.rows, self.fill = Path(path), rows, fill
        self._array: np.ndarray | None = None

    def __getstate__(self):  # workers open their own memory map
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                self._array = np.load(self.path, mmap_mode="r")
            except ValueError:  # an array with no rows (a store with no item) cannot be mapped
                self._array = np.load(self.path)
        return self._array

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        rows = np.asarray(self.rows[index])
        scalar = rows.ndim == 0
        rows = rows.reshape(-1)
        out = np.full((len(rows), *self.array.shape[1:]), self.fill, self.array.dtype)
        have = rows >= 0
        if have.any():
            out[have] = self.array[rows[have]]
        return out[0] if scalar else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def open_arrays(folder: Path) -> dict[str, Indexed]:
    """Every array a prepared folder links, as lazily memory-mapped views in its sample order."""
    folder = Path(folder)
    return {
        name: Indexed(
            folder.parent / spec["store"] / f"{name}.npy", np.load(folder / f"{name}.rows.npy"), spec["fill"]
        )
        for name, spec in linked(folder).items()
    }
