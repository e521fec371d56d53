"""prepare_genomics: write each configured source's array into the cache, fitting on train."""

from __future__ import annotations

import numpy as np

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.genomics import pca, pgs
from medweave.data.genomics.dosage import prepare_variants
from medweave.data.genomics.expression import prepare_embeddings, prepare_expression
from medweave.data.genomics.files import available_sources, genotype_files, pgs_files
from medweave.data.genomics.genotypes import open_genotypes
from medweave.data.genomics.options import ARRAYS, SOURCES, GenomicsOptions
from medweave.data.genomics.samples import SampleNames, cohort_ids
from medweave.errors import MedweaveError


def prepare_genomics(root, subject_ids, train, vocab, out, options=None, lenient=False) -> np.ndarray:
    """Write the configured sources' arrays under ``out``; return which subjects have any of them."""
    opts = GenomicsOptions.from_dict(options)
    bad = BadInput(lenient)
    if "variants" in vocab and "genomics_sources" not in vocab:
        raise MedweaveError(
            "the checkpoint's genomics vocabulary is from an older medweave (before dosages in 1/50 "
            "allele and variant QC): retrain the model with this version"
        )
    sources = vocab.get("genomics_sources") or list(opts.sources or available_sources(root, opts))
    sources = [s for s in SOURCES if s in sources]
    if not sources:
        raise MedweaveError(
            f"{root}/genomics: no variants ({c.VARIANTS_VCF} or {c.VARIANTS_DIR}/*.vcf.gz|*.bcf), "
            f"{c.EXPRESSION} or {c.EMBEDDINGS}; expected at least one for the genomics modality"
        )
    names = SampleNames(root, opts, cohort_ids(root), bad)
    present = np.zeros(len(subject_ids), bool)
    fitting = "genomics_sources" not in vocab
    if "variants" in sources:
        present |= prepare_variants(root, subject_ids, train, vocab, out, opts, names, bad, fitting)
    if {"pcs", "pgs"} & set(sources):
        present |= _prepare_embedded(root, subject_ids, train, vocab, out, opts, names, sources, fitting)
    if "expression" in sources:
        present |= prepare_expression(root, subject_ids, train, vocab, out, opts, names, bad, fitting)
    if "embeddings" in sources:
        present |= prepare_embeddings(root, subject_ids, train, vocab, out, opts, bad, fitting)
    vocab["genomics_sources"] = sources
    return present


def _prepare_embedded(root, subject_ids, train, vocab, out, opts, names, sources, fitting) -> np.ndarray:
    """The pcs and pgs sources: out-of-core passes over the genotype blocks (pca.py, pgs.py)."""
    files = genotype_files(root, opts)
    if not files:
        raise MedweaveError(
            f"cohort '{root}' has no genotypes ({c.VARIANTS_STEM}.pgen|.bed|.bgen, {c.VARIANTS_DIR}/*, "
            f"or {c.VARIANTS_VCF}); needed for data.genomics.sources {sorted({'pcs', 'pgs'} & set(sources))}"
        )
    g = open_genotypes(files, subject_ids, names)
    try:
        have = g.present()
        if fitting and not (have & train).any():
            raise MedweaveError(
                f"{files[0]}: no genome of a train-split subject; PCs and PGS are fitted on train"
            )
        if "pcs" in sources:
            values = (
                pca.fit_project(g, have & train, opts, vocab) if fitting else pca.project(g, vocab["pca"])
            )
            np.save(out / f"{ARRAYS['pcs']}.npy", np.where(have[:, None], values, 0.0).astype(np.float32))
        if "pgs" in sources:
            if fitting:
                values = pgs.fit_scores(
                    g, pgs_files(root, opts), have & train, opts, pgs.cohort_build(root, opts), vocab
                )
            else:
                values = pgs.apply_scores(g, vocab, pgs.cohort_build(root, opts))
            np.save(out / f"{ARRAYS['pgs']}.npy", np.where(have[:, None], values, 0.0).astype(np.float32))
    finally:
        g.close()
    return have
