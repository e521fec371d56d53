"""Reading the EHR cache shards lazily: a batch touches only its subjects' rows of each shard.

A prepared cohort folder names its shards (``ehr.json``, relative to the cache folder) and where
each of its rows lives (``ehr_index.npy``: shard, subject within the shard; -1 for a subject
with no code event). Shard arrays are memory-mapped on first use in each process, so DataLoader
workers and DDP ranks share the page cache and nothing is concatenated. Vocabulary ids and value
z-scores are applied here, per shard-local code, from the run's fitted vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PAD, UNK = 0, 1  # EHR code ids; real codes start at 2
INDEX, SHARDS = "ehr_index.npy", "ehr.json"
ARRAYS = ("offsets", "code", "value", "days")


def write_index(out: Path, folders: list[Path], index: np.ndarray) -> None:
    """Name the shards (relative to the cache folder that holds ``out``) and each row's place."""
    base = out.parent
    (out / SHARDS).write_text(json.dumps([f.relative_to(base).as_posix() for f in folders]))
    np.save(out / INDEX, index)


class EhrCache:
    """The EHR cache shards of one prepared cohort, read a batch of rows at a time."""

    def __init__(self, folder: Path, vocab: dict):
        self.folder = Path(folder)
        self.shards = [self.folder.parent / p for p in json.loads((self.folder / SHARDS).read_text())]
        self.index = np.load(self.folder / INDEX)
        self.vocab = vocab
        self._open: dict[int, dict] = {}

    def __getstate__(self):  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_open": {}}

    def _shard(self, s: int) -> dict:
        if s not in self._open:
            folder = self.shards[s]
            shard = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
            names = json.loads((folder / "codes.json").read_text())
            ids = {name: i + 2 for i, name in enumerate(self.vocab["codes"])}
            stats = self.vocab["code_stats"]
            shard["ids"] = np.array([ids.get(n, UNK) for n in names], np.int32)
            shard["stats"] = np.array([stats.get(n, [np.nan, 1.0]) for n in names], np.float64).reshape(-1, 2)
            self._open[s] = shard
        return self._open[s]

    def batch(self, rows: np.ndarray, width: int | None = None) -> dict[str, np.ndarray]:
        """codes int32, values float32 (z-scores; NaN = no value or no statistics), days
        float32 [len(rows), W]: each subject's events oldest first, padding after (code 0).
        W is the longest in the batch (at least 1) unless ``width`` is given."""
        where = self.index[rows]
        n_rows = len(rows)
        parts, lengths = [], np.zeros(n_rows, np.int64)
        for s in np.unique(where[:, 0]):
            if s < 0:
                continue
            shard = self._shard(int(s))
            mine = np.flatnonzero(where[:, 0] == s)
            local = where[mine, 1]
            start, stop = shard["offsets"][local], shard["offsets"][local + 1]
            lengths[mine] = stop - start
            length = stop - start
            take = np.arange(length.sum()) + np.repeat(start - (np.cumsum(length) - length), length)
            code = np.asarray(shard["code"][take])
            value = np.asarray(shard["value"][take])
            stats = shard["stats"][code]
            z = ((value - stats[:, 0]) / stats[:, 1]).astype(np.float32)
            parts.append((mine, stop - start, shard["ids"][code], z, np.asarray(shard["days"][take])))
        w = width if width is not None else max(int(lengths.max(initial=0)), 1)
        out = {
            "codes": np.zeros((n_rows, w), np.int32),
            "values": np.full((n_rows, w), np.nan, np.float32),
            "days": np.zeros((n_rows, w), np.float32),
        }
        for mine, length, ids, z, days in parts:
            r = np.repeat(mine, length)
            col = np.arange(len(r)) - np.repeat(np.cumsum(length) - length, length)
            out["codes"][r, col], out["values"][r, col], out["days"][r, col] = ids, z, days
        return out

    def present(self) -> np.ndarray:
        return self.index[:, 0] >= 0
