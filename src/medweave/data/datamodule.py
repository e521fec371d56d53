"""CohortDataModule: the prepared cache, memory-mapped (EHR: per shard, data/ehr/cache.py), served as batches.

A batch is a dict (the one batch contract of medweave)::

    ehr_codes       {"codes": int64 [B, L] (0 = padding), "values": float [B, L] (nan = no value),
                     "days": float [B, L] (days before prediction_time; nan = static)}
    text            {"input_ids": int64 [B, T], "attention_mask": int64 [B, T]}
    image           float [B, 1, H, W] in [0, 1], bright = dense (data/imaging/images.py)
    volume          float [B, 1, D, H, W] in [0, 1]: CT/MR at data.volume spacing and size
                    (data/imaging/volumes.py)
    genomics        float [B, F] data.genomics.sources concatenated: standardised dosages, PCs,
                    polygenic scores, normalised expression, external embeddings (0 where missing;
                    data/genomics/)
    <modality>      float [B, W] instead, for a modality served from data.embeddings (the vectors
                    medweave-embed wrote; data/embedding_cache.py)
    <modality>_mask bool [B]   True = the subject has this modality; False rows hold padding
    targets         float [B]  the binary label; for survival tasks, whether the event was seen;
                    the value (regression); int64 [B] class index (multiclass); float [B, K]
                    (multilabel)
    times           float [B]  survival tasks only: days from prediction_time to event or censoring
    subject_id      int64 [B]  for writing predictions only; never logged
    placeholder     True only in a Poisson-sampled training batch that drew no subject on this
                    rank: one subject stands in and must add nothing (training/dp_sgd.py)

Only the modalities in ``modalities`` appear.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader, Dataset

from medweave.data import contract as c
from medweave.data import genomics, store
from medweave.data.ehr import EhrCache
from medweave.data.embedding_cache import open_cache
from medweave.data.prepare import PrepareConfig, prepare
from medweave.data.sampler import PoissonSubjectSampler, SubjectSampler
from medweave.errors import MedweaveError


class PreparedCohort:
    """Opens a prepared cache folder; arrays are memory-mapped from the shared stores it links
    (data/store.py), opened lazily per process."""

    def __init__(self, folder: Path, modalities: list[str], embeddings: dict | None = None):
        self.folder = Path(folder)
        self.modalities = modalities
        self.vocab = json.loads((self.folder / "vocab.json").read_text())
        subjects = np.load(self.folder / "subjects.npz")
        self.subject_id = subjects["subject_id"]
        self.split = subjects["split"]
        self.target = subjects["target"]
        self.time = subjects["time"]  # days to event or censoring; NaN unless a survival task
        self.has_times = not np.isnan(self.time).all()
        self.present = {m: subjects[f"present_{m}"] for m in modalities}
        # Modalities served as vectors from medweave-embed caches, not from this folder.
        self.embeddings = embeddings or {}
        self.present.update({m: e.present for m, e in self.embeddings.items()})
        self._arrays: dict | None = None
        self.ehr = EhrCache(self.folder, self.vocab) if c.EHR_CODES in modalities else None

    @property
    def arrays(self) -> dict[str, store.Indexed]:
        """The modalities' arrays in this cache's row order, served from the shared stores."""
        if self._arrays is None:
            self._arrays = store.open_arrays(self.folder)
        return self._arrays

    def __getstate__(self):  # workers re-open the memory maps instead of pickling arrays
        return {**self.__dict__, "_arrays": None}

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == c.SPLITS.index(split))

    def encoder_inputs(self) -> dict[str, dict]:
        """Sizes each encoder needs, known only once the cohort is prepared."""
        v = self.vocab
        sizes = {
            # codes, code_stats: for an encoder started from a pretrained checkpoint (models/pretrain/)
            c.EHR_CODES: lambda: {
                "vocab_size": len(v["codes"]) + 2,
                "codes": v["codes"],
                "code_stats": v["code_stats"],
            },
            c.TEXT: lambda: {"vocab_size": v["text_vocab_size"], "pad_token_id": v["text_pad_id"]},
            c.IMAGE: lambda: {},  # the backbone config says all it needs
            c.VOLUME: lambda: {},  # likewise (spatial_dims: 3)
            c.GENOMICS: lambda: {"n_features": genomics.width(v)},
        }
        inputs = {m: sizes[m]() for m in self.modalities}
        for m, e in self.embeddings.items():
            inputs[m] = {"embedding_width": e.width, "source": str(e.folder / "embeddings.npy")}
        return inputs

    def batch(self, rows: np.ndarray) -> dict:
        rows = np.sort(rows)  # sequential reads from the memory maps
        a = self.arrays
        out = {
            "targets": torch.from_numpy(self.target[rows]),
            "subject_id": torch.from_numpy(self.subject_id[rows]),
        }
        if self.has_times:
            out["times"] = torch.from_numpy(self.time[rows])
        for m in self.modalities:
            out[f"{m}_mask"] = torch.from_numpy(self.present[m][rows])
        if c.EHR_CODES in self.modalities:
            events = self.ehr.batch(rows)
            out[c.EHR_CODES] = {
                "codes": torch.from_numpy(events["codes"].astype(np.int64)),
                "values": torch.from_numpy(events["values"]),
                "days": torch.from_numpy(events["days"]),
            }
        if c.TEXT in self.modalities:
            ids = a["text_ids"][rows].astype(np.int64)
            attention = ids != self.vocab["text_pad_id"]
            width = max(int(attention.sum(1).max()), 1)
            out[c.TEXT] = {
                "input_ids": torch.from_numpy(ids[:, :width]),
                "attention_mask": torch.from_numpy(attention[:, :width].astype(np.int64)),
            }
        if c.IMAGE in self.modalities:
            out[c.IMAGE] = torch.from_numpy(a["image"][rows].astype(np.float32))
        if c.VOLUME in self.modalities:
            out[c.VOLUME] = torch.from_numpy(a["volume"][rows].astype(np.float32))
        if c.GENOMICS in self.modalities:
            out[c.GENOMICS] = torch.from_numpy(genomics.features(a, self.vocab, rows))
        for m, e in self.embeddings.items():
            out[f"{m}_mask"] = torch.from_numpy(e.present[rows])
            out[m] = torch.from_numpy(np.asarray(e.vectors[rows], np.float32))
        return out


class SplitDataset(Dataset):
    """The subjects of one split; fetches a whole batch at once through ``__getitems__``."""

    def __init__(self, cohort: PreparedCohort, split: str):
        self.cohort, self.rows = cohort, cohort.rows(split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> dict:
        return self.cohort.batch(self.rows[np.asarray(indices)])

    def __getitem__(self, indices: list[int]) -> dict:
        """A whole batch (a batch sampler's list, DataLoader(batch_size=None)); an empty draw
        comes back as one placeholder subject that training must weigh zero."""
        if len(indices) == 0:
            return {**self.cohort.batch(self.rows[:1]), "placeholder": True}
        return self.__getitems__(indices)


def _plain(options) -> dict:
    """Hydra hands nested options over as DictConfig; the cache key wants plain JSON values."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(options, DictConfig):
        return OmegaConf.to_container(options, resolve=True)
    return dict(options or {})


def _already_collated(batch):
    return batch


class CohortDataModule(L.LightningDataModule):
    """Prepares a cohort once and serves its splits: train, tuning (val), held_out (test).

    Args:
        root: cohort folder in the contract layout (``data.root``).
        task: label file under ``labels/`` (without ``.parquet``).
        task_type: binary, survival, multiclass, multilabel or regression (contract.LABEL_VALUES).
        label_tasks: multilabel only: the label files, one per label (default: [task]).
        modalities: any of ehr_codes, text, image, genomics, volume.
        cache_dir: where prepared caches live; shared by runs and DDP ranks on a node.
        batch_size: subjects per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        max_events: most recent EHR events kept per subject.
        max_text_tokens: most recent note tokens kept per subject.
        text_vocab_size: size of the word-level tokenizer fitted when none is given.
        text_tokenizer_path: local folder of a pretrained tokenizer (matching the text encoder).
        image_size: side of the square image the encoder sees.
        image_modalities: imaging index modality values the 2D image modality reads (rows with
            no modality too); CT and MR series are the volume modality's.
        vocab_min_subjects: codes and note words need this many train subjects to enter a
            vocabulary (rarer ones map to unknown; vocabularies travel inside checkpoints).
        vocab: fitted vocabularies from a checkpoint (evaluation); None fits them on train.
        keep_codes: EHR codes the fitted vocabulary keeps however few train subjects have them: a
            pretrained checkpoint's (set by medweave-train and medweave-embed), so that none of
            the codes pretraining learnt maps to unknown.
        seed: fixes the order of training subjects in every epoch (SubjectSampler).
        sampling: how training batches are drawn: ``shuffle`` (each epoch a permutation, fixed
            batches) or ``poisson`` (each subject joins each step's batch with probability
            batch_size x ranks / subjects, as DP-SGD's accountant assumes; privacy=dp sets it).
        lenient: skip bad rows and files with a warning (counts per kind) instead of stopping.
        labels_dir: folder of the label files (``<task>.parquet`` or a ``<task>/`` folder of
            shards), relative to the cohort or absolute; None: ``labels/`` in the cohort.
        label_rows: a subject with several prediction times (as MEDS labellers write them):
            keep the ``first`` or ``last``, or stop with an ``error`` (one sample per subject).
        fingerprint: how the cohort is identified in cache keys: ``quick`` (file paths, sizes and
            times) or ``full`` (every byte); data/fingerprint.py.
        volume: options of the 3D volume modality (spacing, size); see configs/data/cohort.yaml.
        genomics: options of the genomics modality (sample map, variant QC, expression).
        embeddings: modality -> embedding cache folder written by medweave-embed; that modality
            is served as those vectors (for model/encoder=precomputed) instead of being prepared.
            The cache must have been made from this cohort, task and subjects (checked).
        aces: an ACES task config file (task=<file>): its labels are computed over the cohort's
            events and cached under ``cache_dir/labels/`` (data/aces.py); None reads label files.
        prepare_workers: processes that prepare the EHR shards and compute ACES labels over
            the event shards (the cache is the same whatever their number; data/ehr/shards.py).

    Its state in a checkpoint is where training stood in the epoch, so that a resumed run
    continues with the next batch rather than starting the epoch again.
    """

    def __init__(
        self,
        root: str,
        task: str,
        modalities: list[str],
        cache_dir: str,
        task_type: str = "binary",
        label_tasks: list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        max_events: int = 256,
        max_text_tokens: int = 256,
        text_vocab_size: int = 4000,
        text_tokenizer_path: str | None = None,
        image_size: int = 64,
        image_modalities: list[str] | tuple[str, ...] = c.RADIOGRAPH_MODALITIES,
        vocab_min_subjects: int = 5,
        pin_memory: bool = False,
        vocab: dict | None = None,
        keep_codes: list[str] | None = None,
        seed: int = 0,
        lenient: bool = False,
        labels_dir: str | None = None,
        label_rows: str = "error",
        fingerprint: str = "quick",
        volume: dict | None = None,
        genomics: dict | None = None,
        embeddings: dict | None = None,
        aces: str | None = None,
        sampling: str = "shuffle",
        prepare_workers: int = 1,
    ):
        super().__init__()
        if sampling not in ("shuffle", "poisson"):
            raise MedweaveError(f"data.sampling={sampling}: expected shuffle or poisson")
        self.sampling = sampling
        self.sampling_seed: int | None = None  # privacy=dp sets a secret one (training/dp_sgd.py)
        if batch_size < 1:
            raise MedweaveError(f"data.batch_size={batch_size}: expected a positive integer")
        self.root = c.require_root(root)
        self.modalities = c.check_modalities(modalities)
        if task_type not in c.LABEL_VALUES:
            raise MedweaveError(f"task.type={task_type}: expected one of {list(c.LABEL_VALUES)}")
        self.label_tasks = list(label_tasks or [task])
        embeddings = {m: str(f) for m, f in _plain(embeddings).items() if f}
        unknown = sorted(set(embeddings) - set(c.MODALITIES))
        if unknown:
            raise MedweaveError(f"data.embeddings: unknown modality {unknown}; valid: {list(c.MODALITIES)}")
        self.embeddings = {m: f for m, f in embeddings.items() if m in self.modalities}
        self.prepare_config = PrepareConfig(
            task=task,
            modalities=tuple(m for m in self.modalities if m not in self.embeddings),
            task_type=task_type,
            label_tasks=tuple(self.label_tasks) if label_tasks else (),
            max_events=max_events,
            max_text_tokens=max_text_tokens,
            text_vocab_size=text_vocab_size,
            text_tokenizer_path=text_tokenizer_path,
            image_size=image_size,
            image_modalities=tuple(image_modalities),
            min_subjects=vocab_min_subjects,
            keep_codes=tuple(sorted(keep_codes or ())),
            lenient=lenient,
            labels_dir=labels_dir,
            label_rows=label_rows,
            fingerprint=fingerprint,
            volume=_plain(volume),
            genomics=_plain(genomics),
        )
        self.cache_dir = Path(cache_dir)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.vocab, self.seed = vocab, seed
        self.prepare_workers = prepare_workers
        self.aces = aces  # an ACES task file: its labels are computed (and cached) in setup()
        self.cohort: PreparedCohort | None = None
        self._resume: dict | None = None

    def prepare_data(self) -> None:
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        # Every process may call this; prepare() locks, so one builds and the others reuse.
        if self.cohort is None:
            if self.aces:
                self._label_with_aces()
            folder = prepare(
                self.root, self.cache_dir, self.prepare_config, self.vocab, workers=self.prepare_workers
            )
            served = {m: open_cache(f, m, folder, self.root) for m, f in self.embeddings.items()}
            self.cohort = PreparedCohort(folder, list(self.prepare_config.modalities), served)

    def prepare_part(self, part: tuple[int, int]) -> int:
        """Prepare only part (k, n) of the EHR cache shards (a Slurm array task's share; the
        cache itself is written by a later setup()). Returns the number of shard units."""
        from medweave.data.prepare import prepare_ehr_part

        if self.aces and not self.prepare_config.labels_dir:
            self._label_with_aces()
        return prepare_ehr_part(self.root, self.cache_dir, self.prepare_config, part, self.prepare_workers)

    def _label_with_aces(self) -> None:
        """Labels from the ACES task file, then read like any MEDS label file (data/aces.py)."""
        import dataclasses

        from medweave.data import aces
        from medweave.data.fingerprint import cohort_fingerprint

        if self.prepare_config.labels_dir:
            raise MedweaveError(
                f"task.aces={self.aces} computes the labels; "
                f"data.labels_dir={self.prepare_config.labels_dir} names label files too: "
                "keep one (task=<name> data.labels_dir=... reads ready-made labels)"
            )
        fingerprint = cohort_fingerprint(self.root, self.prepare_config.fingerprint, self.cache_dir)
        folder = aces.labels_dir(self.aces, self.root, self.cache_dir, fingerprint, self.prepare_workers)
        self.prepare_config = dataclasses.replace(self.prepare_config, labels_dir=str(folder))

    def encoder_inputs(self) -> dict[str, dict]:
        self.setup()
        return self.cohort.encoder_inputs()

    def head_inputs(self) -> dict:
        """What the task head needs from the cohort: class names, label names or target scale."""
        self.setup()
        v, kind = self.cohort.vocab, self.prepare_config.task_type
        if kind == "multiclass":
            return {"classes": v["classes"]}
        if kind == "multilabel":
            return {"labels": v["labels"]}
        if kind == "regression":
            return {"target_mean": v["target_mean"], "target_sd": v["target_sd"]}
        return {}

    def _loader(self, split: str, train: bool = False, sharded: bool = True) -> DataLoader:
        """Under a trainer (``sharded``), this rank's share of the split; else all of it, in order."""
        self.setup()
        dataset = SplitDataset(self.cohort, split)
        world, rank, pad = 1, 0, train
        if sharded and self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
            # FSDP gathers parameters in every forward: ranks must run as many batches as each
            # other, so evaluation shards are padded too (a few subjects count twice in metrics).
            pad = pad or isinstance(self.trainer.strategy, FSDPStrategy)
        if train and self.sampling == "poisson":
            return self._poisson_loader(dataset, world, rank)
        sampler = SubjectSampler(len(dataset), world, rank, shuffle=train, seed=self.seed, pad=pad)
        if train and self._resume:
            sampler.resume(self._resume["epoch"], self._resume["batches"] * self.batch_size)
            self._resume = None
        return self._data_loader(dataset, sampler, self.batch_size)

    def _poisson_loader(self, dataset: SplitDataset, world: int, rank: int) -> DataLoader:
        """Poisson batches of expected size batch_size per rank (PoissonSubjectSampler)."""
        rate = self.batch_size * world / max(len(dataset), 1)
        if rate > 1:
            raise MedweaveError(
                f"data.sampling=poisson: data.batch_size={self.batch_size} x {world} ranks is more than "
                f"the {len(dataset)} training subjects; lower data.batch_size"
            )
        seed = self.seed if self.sampling_seed is None else self.sampling_seed
        sampler = PoissonSubjectSampler(len(dataset), rate, world, rank, seed=seed)
        if self._resume:
            sampler.resume(self._resume["epoch"], self._resume["batches"])
            self._resume = None
        return self._data_loader(dataset, sampler, None)  # the sampler yields whole batches

    def _data_loader(self, dataset: SplitDataset, sampler, batch_size: int | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_already_collated,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # Worker seeds from a generator of their own: the global RNG stream (dropout) stays
            # the same whether or not a run was resumed.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(c.TRAIN_SPLIT, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(c.TUNING_SPLIT)

    def test_dataloader(self) -> DataLoader:
        return self._loader(c.HELD_OUT_SPLIT)

    def state_dict(self) -> dict:
        """Where training stands: the epoch, and how many of its batches have been trained on."""
        if self.trainer is None or self.trainer.state.fn != "fit":
            return {}
        loop = self.trainer.fit_loop
        done = loop.epoch_loop.batch_progress.current.processed
        if done >= self.trainer.num_training_batches:  # saved at the epoch's end: the next starts fresh
            return {"epoch": self.trainer.current_epoch + 1, "batches": 0}
        return {"epoch": self.trainer.current_epoch, "batches": done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state or None

    def split_dataloader(self, split: str) -> DataLoader:
        if split not in c.SPLITS:
            raise MedweaveError(f"split='{split}': expected one of {list(c.SPLITS)}")
        return self._loader(split, sharded=False)
