"""PretrainDataModule: windows of every subject's timeline from the token store (data/ehr/pretrain.py).

A batch::

    codes  int64 [B, W]   0 = padding, 1 = unknown, 2 = mask, real codes from 3
    bins   int64 [B, W]   0 = no value, 1..n_bins = the code's train quantile bin
    age    float [B, W]   days since birth (NaN: static event, or no birth event)
    delta  float [B, W]   days since the previous timed event (0 for the first; NaN: static)

Validation holds out ``val_fraction`` of the store's subjects (chosen by a hash of the id, the
same in every run; any split, since the store holds only what the leakage rule lets in): their
windows are never trained on. Sampling and resume are the task
DataModule's (data/sampler.py: same order on every rank, continued exactly after preemption).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medweave.data import contract as c
from medweave.data.datamodule import CohortDataModule, _already_collated, _plain
from medweave.data.ehr import pretrain as store
from medweave.data.sampler import SubjectSampler
from medweave.errors import MedweaveError


class WindowDataset(Dataset):
    """Some of the store's windows; fetches a whole batch at once (``__getitems__``)."""

    def __init__(self, tokens: store.TokenStore, samples: np.ndarray):
        self.tokens, self.samples = tokens, samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitems__(self, indices: list[int]) -> dict:
        out = self.tokens.batch(self.samples[np.asarray(indices)])
        del out["time"]  # for checks only (tests read it through the store)
        return {k: torch.from_numpy(v) for k, v in out.items()}


def held_for_validation(ids: np.ndarray, fraction: float) -> np.ndarray:
    """A fixed share of subjects, by a hash of the id (the same whatever the shard layout)."""
    if fraction <= 0:
        return np.zeros(len(ids), bool)
    unique, inverse = np.unique(ids, return_inverse=True)
    draw = (
        np.array(
            [
                int.from_bytes(
                    hashlib.blake2b(int(i).to_bytes(8, "little", signed=True), digest_size=4).digest(),
                    "little",
                )
                for i in unique
            ],
            np.float64,
        )
        / 2**32
    )
    return (draw < fraction)[inverse.reshape(-1)]


class PretrainDataModule(L.LightningDataModule):
    """Args:
    root: cohort folder (``data.root``).
    cache_dir: where the token store lives (``<cache_dir>/pretrain/``), shared by runs and ranks.
    eval_subjects: the leakage rule for tuning and held-out subjects: ``cut`` (only before their
        earliest prediction time) or ``exclude`` (nothing of theirs); data/ehr/pretrain.py.
    labels_dir: the label files whose prediction times ``cut`` respects (default ``labels/``).
    max_events: tokens per window (static events included).
    batch_size: windows per batch (per process under DDP).
    num_workers: DataLoader worker processes.
    vocab_min_subjects: train subjects a code (and a code's value bins) needs.
    n_bins: quantile bins per valued code.
    val_fraction: share of train-split subjects held out for the validation loss.
    vocab: a checkpoint's vocabulary (resume); None fits it on the store.
    seed: fixes the window order of every epoch.
    lenient: skip bad rows and files with a warning instead of stopping.
    pin_memory: batches in page-locked memory (GPU).
    """

    def __init__(
        self,
        root: str,
        cache_dir: str,
        eval_subjects: str = "cut",
        labels_dir: str | None = None,
        max_events: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        vocab_min_subjects: int = 5,
        n_bins: int = 10,
        val_fraction: float = 0.02,
        vocab: dict | None = None,
        seed: int = 0,
        lenient: bool = False,
        pin_memory: bool = False,
    ):
        super().__init__()
        if eval_subjects not in store.EVAL_SUBJECTS:
            raise MedweaveError(
                f"pretrain.eval_subjects={eval_subjects}: expected one of {list(store.EVAL_SUBJECTS)}"
            )
        for name, value in (("max_events", max_events), ("batch_size", batch_size), ("n_bins", n_bins)):
            if value < (2 if name == "max_events" else 1):
                raise MedweaveError(f"data.{name}={value}: expected a larger positive integer")
        if not 0 <= val_fraction < 1:
            raise MedweaveError(f"data.val_fraction={val_fraction}: expected 0 <= fraction < 1")
        self.root = c.require_root(root)
        self.cache_dir = Path(cache_dir)
        self.eval_subjects, self.labels_dir, self.lenient = eval_subjects, labels_dir, lenient
        self.max_events, self.batch_size, self.num_workers = max_events, batch_size, num_workers
        self.min_subjects, self.n_bins, self.val_fraction = vocab_min_subjects, n_bins, val_fraction
        # Plain JSON values: Hydra hands a dict argument over as a DictConfig, which would travel
        # into every checkpoint (and torch.load(weights_only=True) refuses it).
        self.vocab = _plain(vocab) if vocab is not None else None
        self.seed, self.pin_memory = seed, pin_memory
        self.tokens: store.TokenStore | None = None
        self.folders: list[Path] = []
        self._resume: dict | None = None

    def prepare_data(self) -> None:
        if self.folders:  # built already in this process
            return
        self.folders = store.build_store(
            self.root, self.cache_dir, self.eval_subjects, self.labels_dir, self.lenient
        )

    def setup(self, stage: str | None = None) -> None:
        if self.tokens is not None:
            return
        if not self.folders:  # other ranks: rank 0 built them in prepare_data; this only reads
            self.prepare_data()
        if self.vocab is None:
            self.vocab = store.fit_vocab(self.folders, self.min_subjects, self.n_bins)
        if not self.vocab["codes"]:
            raise MedweaveError(
                f"cohort '{self.root}': no code has {self.min_subjects} train subjects; "
                "lower data.vocab_min_subjects"
            )
        self.tokens = store.TokenStore(self.folders, self.vocab, self.max_events)
        val = held_for_validation(self.tokens.samples[:, 3], self.val_fraction)
        self.split = {"train": np.flatnonzero(~val), "val": np.flatnonzero(val)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab["codes"]) + 3

    def summary(self) -> dict:
        """Counts for the MLflow run (no IDs)."""
        return {
            **{f"store/{k}": v for k, v in store.describe(self.folders).items()},
            "store/windows_train": len(self.split["train"]),
            "store/windows_val": len(self.split["val"]),
            "store/codes": len(self.vocab["codes"]),
            "store/valued_codes": len(self.vocab["bins"]),
        }

    def _loader(self, part: str, train: bool) -> DataLoader:
        self.setup()
        dataset = WindowDataset(self.tokens, self.tokens.samples[self.split[part]])
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = SubjectSampler(len(dataset), world, rank, shuffle=train, seed=self.seed, pad=True)
        if train and self._resume:
            sampler.resume(self._resume["epoch"], self._resume["batches"] * self.batch_size)
            self._resume = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_already_collated,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    # Where training stands in the epoch: the task DataModule's, so a resumed run continues with
    # the next batch (training/preemption.py).
    state_dict = CohortDataModule.state_dict
    load_state_dict = CohortDataModule.load_state_dict
