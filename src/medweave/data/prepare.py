"""Read the cohort once into per-modality stores that training memory-maps, and index them per task.

This module only orchestrates: each modality's preparation lives in its own room (data/ehr/,
data/genomics/, data/imaging/, data/text/). The heavy arrays live in stores under the cache
folder that tasks share (data/store.py): EHR cache shards (``ehr/``, prepared shard by shard in
bounded memory and in parallel, ``workers``), notes (``text/``), images and volumes (``image/``,
``volume/``) and genomics (``genomics/``), each keyed only by what it depends on: its input files,
its own options and, where statistics are fitted on train, the train subjects. So another task,
an ablation arm or an evaluation over the same inputs reuses them.

A task's cache folder holds its samples (subjects.npz: subjects, splits, prediction times,
targets), the fitted vocabulary and, per modality, which store row each sample reads. Its name
is a hash of the cohort's fingerprint, the preparation settings and the vocabulary, so it is
reused while all three are unchanged and rebuilt when any changes. Folders and stores are built
in a temporary sibling and renamed into place under a lock, so a crash leaves nothing
half-written and concurrent ranks wait and reuse them.

Vocabularies (EHR codes, value statistics, the note tokenizer, genotype statistics) are fitted on
the train split only; a checkpoint carries them so that evaluation maps a cohort the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from filelock import FileLock

from medweave import __version__
from medweave.data import contract as c
from medweave.data import ehr
from medweave.data.bad_input import BadInput
from medweave.data.ehr import PAD, UNK  # noqa: F401 - the ids, where they were before data/ehr/
from medweave.data.fingerprint import cohort_fingerprint
from medweave.data.genomics import prepare_genomics
from medweave.data.imaging import ImagingIndex, prepare_images, prepare_volumes
from medweave.data.readers import meds
from medweave.data.text import prepare_text
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

CACHE_FORMAT = 5  # bump when preparation changes what it writes (the stores' keys hold it too)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PrepareConfig:
    """How each modality is turned into arrays (part of the cache key)."""

    task: str
    modalities: tuple[str, ...]
    task_type: str = "binary"  # see contract.LABEL_VALUES
    label_tasks: tuple[str, ...] = ()  # multilabel: one label file per label; () = (task,)
    max_events: int = 256
    max_text_tokens: int = 256
    text_vocab_size: int = 4000
    text_tokenizer_path: str | None = None  # a local Hugging Face tokenizer; None fits one
    image_size: int = 64
    image_modalities: tuple[str, ...] = c.RADIOGRAPH_MODALITIES  # index modality values the image reads
    min_subjects: int = 5  # a code or note word enters a vocabulary only if this many train subjects have it
    keep_codes: tuple[str, ...] = ()  # EHR codes that enter whatever their count (a pretrained checkpoint's)
    lenient: bool = False  # skip bad rows and files with a warning instead of stopping (bad_input.py)
    labels_dir: str | None = None  # label files' folder (relative to the cohort, or absolute); None: labels/
    label_rows: str = "error"  # several prediction times for a subject: keep "first", "last", or "error"
    fingerprint: str = "quick"  # how the cohort is identified: file stats, or every byte (fingerprint.py)
    # Per-modality options, as plain dicts from the data config (data.volume, data.genomics).
    volume: dict = field(default_factory=dict)
    genomics: dict = field(default_factory=dict)


def _outside_labels_fingerprint(root: Path, cfg: PrepareConfig, cache_dir: Path) -> str | None:
    """Labels kept outside the cohort folder (data.labels_dir) are part of the cache key too."""
    base = meds.labels_base(root, cfg.labels_dir).resolve()
    if not cfg.labels_dir or base.is_relative_to(root.resolve()) or not base.is_dir():
        return None
    return cohort_fingerprint(base, cfg.fingerprint, cache_dir)


def prepare(
    root: Path, cache_dir: Path, cfg: PrepareConfig, vocab: dict | None = None, workers: int = 1
) -> Path:
    """Return the prepared cache folder for this cohort, building it if needed.

    ``workers`` processes prepare the EHR shards; the result is the same whatever their number.
    """
    fingerprint = cohort_fingerprint(root, cfg.fingerprint, cache_dir)
    key_src = json.dumps(
        {
            "format": CACHE_FORMAT,
            "medweave": __version__,
            "cohort": fingerprint,
            "labels": _outside_labels_fingerprint(root, cfg, cache_dir),
            "cfg": asdict(cfg),
            "vocab": vocab,
        },
        sort_keys=True,
        default=str,
    )
    key = hashlib.blake2b(key_src.encode(), digest_size=10).hexdigest()
    out = Path(cache_dir).expanduser().resolve() / key
    out.parent.mkdir(parents=True, exist_ok=True)
    # One process builds; the others (DDP ranks, parallel runs) wait here and then reuse it.
    with FileLock(str(out.with_name(f".{key}.lock"))):
        if (out / MANIFEST).exists():
            log.info("Using prepared cache %s", out)
            return out
        tmp = out.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            _build(root, tmp, cfg, vocab, workers)
            # The cohort's fingerprint names where the rows came from (embedding caches check it).
            manifest = {"format": CACHE_FORMAT, "config": asdict(cfg), "cohort": fingerprint}
            (tmp / MANIFEST).write_text(json.dumps(manifest))
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("Prepared cohort cache %s", out)
    return out


def prepare_ehr_part(
    root: Path, cache_dir: Path, cfg: PrepareConfig, part: tuple[int, int], workers: int = 1
):
    """Only the EHR cache shards of ``part`` (k, n): every n-th unit of shards from the k-th.

    For Slurm arrays: each array task prepares its part; the run after them (``prepare``) finds
    every shard done and only reduces the vocabulary and writes the index. Returns the number of
    units in the cohort.
    """
    root = Path(root)
    _, _, subject_ids, pred_time, split = _read_labelled(root, cfg, BadInput(cfg.lenient))
    labelled = ehr.Labelled(subject_ids, pred_time, split == c.SPLITS.index(c.TRAIN_SPLIT))
    store = Path(cache_dir).expanduser().resolve() / ehr.STORE
    store.mkdir(parents=True, exist_ok=True)
    units = ehr.plan_units(root)
    ehr.run_units(root, units, labelled, cfg.max_events, cfg.lenient, store, workers, part)
    return len(units)


def _read_labelled(root: Path, cfg: PrepareConfig, bad: BadInput):
    """(labels, order, subject_ids, pred_time, split): labels with a split; the rest sorted by subject."""
    label_tasks = list(cfg.label_tasks or (cfg.task,))
    values = c.LABEL_VALUES[cfg.task_type]
    labels = meds.read_labels(
        root, label_tasks[0], values, task_type=cfg.task_type, **_label_options(cfg, bad)
    )
    labels, split_of = _labelled_with_split(root, labels, meds.read_splits(root, bad), bad)
    subject_ids = labels.column("subject_id").to_numpy()
    order = np.argsort(subject_ids)
    subject_ids = subject_ids[order]
    pred_time = meds.microseconds(labels.column("prediction_time"))[order]
    split = np.array([c.SPLITS.index(split_of[s]) for s in subject_ids.tolist()], np.int8)
    return labels, order, subject_ids, pred_time, split


def _build(root: Path, out: Path, cfg: PrepareConfig, vocab: dict | None, workers: int = 1) -> None:
    bad = BadInput(cfg.lenient)  # strict: the first fault raises; lenient: rows left out, counted
    label_tasks = list(cfg.label_tasks or (cfg.task,))
    labels, order, subject_ids, pred_time, split = _read_labelled(root, cfg, bad)
    train = split == c.SPLITS.index(c.TRAIN_SPLIT)
    if vocab is None and not train.any():  # vocabularies are fitted on train
        raise MedweaveError(f"{root / c.SUBJECT_SPLITS}: no labelled subject is in the train split")
    vocab = dict(vocab or {})
    target, time = _targets(root, cfg, label_tasks, labels, order, subject_ids, pred_time, train, vocab)

    present = {}
    labelled = ehr.Labelled(subject_ids, pred_time, train)
    if c.EHR_CODES in cfg.modalities or c.TEXT in cfg.modalities:
        units = ehr.plan_units(root)
    if c.EHR_CODES in cfg.modalities:
        present[c.EHR_CODES] = ehr.prepare_codes(
            root,
            out,
            labelled,
            units,
            cfg.max_events,
            cfg.min_subjects,
            cfg.lenient,
            vocab,
            workers,
            cfg.keep_codes,
        )
    if c.TEXT in cfg.modalities:
        present[c.TEXT] = prepare_text(root, units, labelled, bad, cfg, vocab, out)
    if c.IMAGE in cfg.modalities or c.VOLUME in cfg.modalities:
        index = ImagingIndex(root, BadInput(cfg.lenient))  # its faults are reported once, here
    if c.IMAGE in cfg.modalities:
        present[c.IMAGE] = prepare_images(root, index, subject_ids, pred_time, cfg, out)
    if c.VOLUME in cfg.modalities:
        present[c.VOLUME] = prepare_volumes(root, index, subject_ids, pred_time, cfg, out)
    if c.GENOMICS in cfg.modalities:
        present[c.GENOMICS] = prepare_genomics(
            root, subject_ids, train, vocab, out, cfg.genomics, cfg.lenient, cfg.fingerprint
        )

    np.savez(
        out / "subjects.npz",
        subject_id=subject_ids,
        split=split,
        prediction_time=pred_time,  # int64 us: what an embedding cache must have been cut at
        target=target,
        time=time,
        **{f"present_{m}": p for m, p in present.items()},
    )
    (out / "vocab.json").write_text(json.dumps(vocab))
    if bad.skipped:
        log.warning("lenient mode skipped %d row(s) or file(s) in all", sum(bad.skipped.values()))


def _label_options(cfg: PrepareConfig, bad: BadInput) -> dict:
    return {"bad": bad, "labels_dir": cfg.labels_dir, "label_rows": cfg.label_rows}


def _labelled_with_split(root: Path, labels, splits, bad: BadInput):
    """Labels of subjects in train/tuning/held_out, and each subject's split.

    Subjects of custom splits, or listed in two splits (lenient), were reported when the splits
    were read: their labels are left out quietly. A labelled subject missing from the splits file
    is a fault of its own (strict: error naming the label row; lenient: left out, counted).
    """
    ids = labels.column("subject_id").to_numpy()
    split_ids = splits.table.column("subject_id")
    split_of = dict(zip(split_ids.to_pylist(), splits.table.column("split").to_pylist(), strict=True))
    has_split = np.isin(ids, split_ids.to_numpy())
    unused = np.isin(ids, splits.unused)
    if unused.any():
        log.info("%d labelled subject(s) are in no MEDS split: not used", int(unused.sum()))
    missing = np.flatnonzero(~has_split & ~unused)
    if len(missing):
        first = int(missing[0])
        bad.fault(
            labels.column(meds.SOURCE_FILE)[first].as_py(),
            f"row {labels.column(meds.SOURCE_ROW)[first].as_py()}, field subject_id",
            f"labelled subject has no split in {root / c.SUBJECT_SPLITS}",
            count=len(missing),
        )
    return labels.filter(pa.array(has_split)), split_of


def _targets(root, cfg, label_tasks, labels, order, subject_ids, pred_time, train, vocab):
    """(target, time) in sorted subject order. target: float [N] (binary; survival: event seen;
    regression), int64 class index [N] (multiclass, classes fitted on train and kept in vocab), or
    float [N, K] (multilabel: one label file per column). time: survival days, else NaN."""

    def column(table, name, rows=order):
        return table.column(name).to_numpy(zero_copy_only=False)[rows]

    time = np.full(len(order), np.nan, np.float32)
    if cfg.task_type == "survival":
        time = column(labels, "float_value").astype(np.float32)
        bad = ~np.isfinite(time) | (time < 0)
        if bad.any():
            raise MedweaveError(
                f"{meds.label_source(root, label_tasks[0], cfg.labels_dir)}: float_value (days to event "
                f"or censoring) must be finite and >= 0; {int(bad.sum())} row(s) are not"
            )
    if cfg.task_type == "regression":
        values = column(labels, "float_value").astype(np.float32)
        if "target_mean" not in vocab:  # the head predicts z-scores; train's scale travels with it
            vocab["target_mean"] = round(float(values[train].mean()), 6)
            vocab["target_sd"] = round(float(values[train].std()) or 1.0, 6)
        return values, time
    if cfg.task_type == "multiclass":
        values = np.asarray(column(labels, "categorical_value"), dtype=object)
        if "classes" not in vocab:
            vocab["classes"] = sorted(set(values[train].tolist()))
        index = {name: k for k, name in enumerate(vocab["classes"])}
        unknown = sorted(set(values.tolist()) - set(index))
        if unknown:
            raise MedweaveError(
                f"{meds.label_source(root, label_tasks[0], cfg.labels_dir)}: classes {unknown[:5]} "
                f"never occur in train (train classes: {vocab['classes']})"
            )
        return np.array([index[v] for v in values], np.int64), time
    if cfg.task_type == "multilabel":
        columns = [column(labels, "boolean_value").astype(np.float32)]
        for task in label_tasks[1:]:
            bad = BadInput(cfg.lenient)
            other = meds.read_labels(root, task, c.LABEL_VALUES["binary"], **_label_options(cfg, bad))
            # Only the samples the first label file kept (split checks, lenient drops) are compared.
            other = other.filter(pc.is_in(other.column("subject_id"), pa.array(subject_ids)))
            ids = other.column("subject_id").to_numpy()
            rows = np.argsort(ids)
            if not np.array_equal(ids[rows], subject_ids) or not np.array_equal(
                meds.microseconds(other.column("prediction_time"))[rows], pred_time
            ):
                first = meds.label_source(root, label_tasks[0], cfg.labels_dir)
                raise MedweaveError(
                    f"{meds.label_source(root, task, cfg.labels_dir)}: a multilabel task needs the same "
                    f"subjects and prediction times in every label file (as in {first})"
                )
            columns.append(column(other, "boolean_value", rows).astype(np.float32))
        vocab["labels"] = label_tasks
        return np.stack(columns, axis=1), time
    return column(labels, "boolean_value").astype(np.float32), time
