"""prepare_genomics: the configured sources' arrays in a shared genomics store, fitted on train.

The store (``<cache_dir>/genomics/<key>/``, data/store.py) is keyed by the cohort's genomics
files, data.genomics and the train subjects the statistics are fitted on (variant QC, PCA, PGS,
z-scores), or, when a checkpoint's vocabulary is applied, by that vocabulary: not by the task's
labels or other modalities. Each source's array has one row per subject that source covers (a
genome, an expression or embedding row: ``<array>.subjects.npy``), so tasks over the same train
subjects share one copy; a task's cache only links its samples to those rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data import store
from medweave.data.bad_input import BadInput
from medweave.data.genomics import pca, pgs
from medweave.data.genomics.dosage import prepare_variants
from medweave.data.genomics.expression import prepare_embeddings, prepare_expression
from medweave.data.genomics.files import available_sources, genotype_files, pgs_files
from medweave.data.genomics.genotypes import open_genotypes
from medweave.data.genomics.options import ARRAYS, SOURCES, GenomicsOptions
from medweave.data.genomics.samples import SampleNames, cohort_ids, rows_of
from medweave.data.readers import vcf
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

STORE = "genomics"  # under cache_dir
SUBJECTS = ".subjects.npy"  # <array>.subjects.npy: the sorted subject_id of each row
FITTED = "fitted.json"  # what the build put into the vocabulary (merged into each task's)


def prepare_genomics(
    root, subject_ids, train, vocab, out, options=None, lenient=False, fingerprint="quick"
) -> np.ndarray:
    """Link the configured sources' arrays (built once in the store) to ``subject_ids``, put the
    fitted statistics into ``vocab``; return which subjects have any source."""
    from medweave.data.prepare import CACHE_FORMAT

    opts = GenomicsOptions.from_dict(options)
    if "variants" in vocab and "genomics_sources" not in vocab:
        raise MedweaveError(
            "the checkpoint's genomics vocabulary is from an older medweave (before dosages in 1/50 "
            "allele and variant QC): retrain the model with this version"
        )
    train_ids = np.asarray(subject_ids[train], np.int64)
    fitting = "genomics_sources" not in vocab
    fit_on = {"train": _digest(train_ids.tobytes())} if fitting else {"vocab": _digest(vocab)}
    inputs = store.inputs_fingerprint(root, _inputs(root, opts), fingerprint, out.parent)
    folder = (
        out.parent
        / STORE
        / store.key(cache=CACHE_FORMAT, inputs=inputs, options=asdict(opts), lenient=lenient, **fit_on)
    )
    info, built = store.build_once(
        folder, lambda tmp: _build_store(root, train_ids, dict(vocab), tmp, opts, lenient)
    )
    if not built and (skipped := sum(info.get("skipped", {}).values())):
        log.warning(
            "genomics store: %d faulty row(s) or file(s) were skipped when it was built (lenient)", skipped
        )
    vocab.update(json.loads((folder / FITTED).read_text()))
    present = np.zeros(len(subject_ids), bool)
    for source in vocab["genomics_sources"]:
        name = ARRAYS[source]
        have = np.load(folder / f"{name}{SUBJECTS}")
        rows = np.full(len(subject_ids), -1, np.int64)
        if len(have):
            row, known = rows_of(have, subject_ids)
            rows[known] = row[known]
        store.link(out, name, folder, rows, fill=vcf.MISSING if source == "variants" else 0)
        present |= rows >= 0
    return present


def _digest(what) -> str:
    data = what if isinstance(what, bytes) else json.dumps(what, sort_keys=True).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _inputs(root: Path, opts: GenomicsOptions) -> list[str]:
    """What the arrays are read from: genomics/, the cohort's subjects (sample names are checked
    against them), dataset.json (the genome build) and any file data.genomics names elsewhere."""
    named = [opts.variant_set, opts.sample_map, *(opts.pgs_files or ())]
    return ["genomics", c.SUBJECT_SPLITS, c.DATASET_METADATA, *(n for n in named if n)]


def _build_store(root, train_ids, vocab, tmp, opts, lenient) -> dict:
    """Write each source's array and its subjects into ``tmp`` and the fitted vocabulary."""
    before = dict(vocab)
    bad = BadInput(lenient)
    sources = vocab.get("genomics_sources") or list(opts.sources or available_sources(root, opts))
    sources = [s for s in SOURCES if s in sources]
    if not sources:
        raise MedweaveError(
            f"{root}/genomics: no variants ({c.VARIANTS_VCF} or {c.VARIANTS_DIR}/*.vcf.gz|*.bcf), "
            f"{c.EXPRESSION} or {c.EMBEDDINGS}; expected at least one for the genomics modality"
        )
    names = SampleNames(root, opts, cohort_ids(root), bad)
    fitting = "genomics_sources" not in vocab
    written = {}
    if "variants" in sources:
        written[ARRAYS["variants"]] = prepare_variants(root, train_ids, vocab, tmp, opts, names, bad, fitting)
    if {"pcs", "pgs"} & set(sources):
        written.update(_prepare_embedded(root, train_ids, vocab, tmp, opts, names, sources, fitting))
    if "expression" in sources:
        written[ARRAYS["expression"]] = prepare_expression(
            root, train_ids, vocab, tmp, opts, names, bad, fitting
        )
    if "embeddings" in sources:
        written[ARRAYS["embeddings"]] = prepare_embeddings(root, train_ids, vocab, tmp, opts, bad, fitting)
    for name, subjects in written.items():
        np.save(tmp / f"{name}{SUBJECTS}", np.asarray(subjects, np.int64))
    vocab["genomics_sources"] = sources
    fitted = {k: v for k, v in vocab.items() if k not in before or before[k] != v}
    (tmp / FITTED).write_text(json.dumps(fitted))
    return {"subjects": {n: int(len(s)) for n, s in written.items()}, "skipped": bad.summary()}


def _prepare_embedded(root, train_ids, vocab, out, opts, names, sources, fitting) -> dict:
    """The pcs and pgs sources: out-of-core passes over the genotype blocks (pca.py, pgs.py), for
    every cohort subject with a genome; returns array name -> its subjects."""
    files = genotype_files(root, opts)
    if not files:
        raise MedweaveError(
            f"cohort '{root}' has no genotypes ({c.VARIANTS_STEM}.pgen|.bed|.bgen, {c.VARIANTS_DIR}/*, "
            f"or {c.VARIANTS_VCF}); needed for data.genomics.sources {sorted({'pcs', 'pgs'} & set(sources))}"
        )
    g = open_genotypes(files, None, names)
    written = {}
    try:
        have = g.present()
        train = np.isin(g.subject_ids, train_ids)
        if fitting and not (have & train).any():
            raise MedweaveError(
                f"{files[0]}: no genome of a train-split subject; PCs and PGS are fitted on train"
            )
        if "pcs" in sources:
            values = (
                pca.fit_project(g, have & train, opts, vocab) if fitting else pca.project(g, vocab["pca"])
            )
            np.save(out / f"{ARRAYS['pcs']}.npy", np.where(have[:, None], values, 0.0).astype(np.float32))
            written[ARRAYS["pcs"]] = g.subject_ids
        if "pgs" in sources:
            if fitting:
                values = pgs.fit_scores(
                    g, pgs_files(root, opts), have & train, opts, pgs.cohort_build(root, opts), vocab
                )
            else:
                values = pgs.apply_scores(g, vocab, pgs.cohort_build(root, opts))
            np.save(out / f"{ARRAYS['pgs']}.npy", np.where(have[:, None], values, 0.0).astype(np.float32))
            written[ARRAYS["pgs"]] = g.subject_ids
    finally:
        g.close()
    return written
