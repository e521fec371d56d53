"""prepare_genomics: write each configured source's array into the cache, fitting on train."""

from __future__ import annotations

import numpy as np

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.genomics.dosage import prepare_variants
from medweave.data.genomics.expression import prepare_embeddings, prepare_expression
from medweave.data.genomics.files import available_sources
from medweave.data.genomics.options import SOURCES, GenomicsOptions
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
    sources = vocab.get("genomics_sources") or list(opts.sources or available_sources(root))
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
    if "expression" in sources:
        present |= prepare_expression(root, subject_ids, train, vocab, out, opts, names, bad, fitting)
    if "embeddings" in sources:
        present |= prepare_embeddings(root, subject_ids, train, vocab, out, opts, bad, fitting)
    vocab["genomics_sources"] = sources
    return present
