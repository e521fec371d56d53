"""The variants source: int8 alt-allele dosages of the variants passing QC on train (a dense matrix)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data.genomics.files import genotype_files, variant_files
from medweave.data.genomics.genotypes import open_reader
from medweave.data.genomics.options import ARRAYS
from medweave.data.genomics.samples import rows_of
from medweave.data.readers import vcf
from medweave.data.readers.genotypes import block_size
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)


def read_selected(files: list[Path], wanted: list[str]) -> vcf.Dosages:
    """The listed variants (chrom:pos:ref:alt keys or file IDs) of PLINK/BGEN sets, as int8 dosages.

    Only these variants are read (in blocks), so a few thousand selected variants of a
    million-variant set cost what they hold, not the set.
    """
    want = set(wanted)
    samples, ids, parts = None, [], []
    for path in files:
        r = open_reader(path)
        try:
            keys = r.variants.keys()
            pick = np.array(
                [j for j, k in enumerate(keys) if k in want or r.variants.id[j] in want], np.int64
            )
            if samples is None:
                samples = list(r.samples)
            elif set(r.samples) != set(samples):
                raise MedweaveError(
                    f"{path}: holds other samples than {files[0].name}; expected every file of a "
                    "per-chromosome set to hold the same samples"
                )
            order = np.array([r.samples.index(s) for s in samples]) if r.samples != samples else None
            for index, block in r.blocks(block_size(len(samples)), pick):
                d = block if order is None else block[:, order]
                scaled = np.rint(np.nan_to_num(d, nan=-1.0 / vcf.DOSAGE_SCALE) * vcf.DOSAGE_SCALE)
                parts.append(scaled.clip(vcf.MISSING, 127).astype(np.int8))
                ids += [keys[j] for j in index]
        finally:
            r.close()
    if not ids:
        raise MedweaveError(
            f"data.genomics.variant_set: none of its {len(want)} variants is in {files[0].parent}; expected "
            "chrom:pos:ref:alt keys (chromosome without 'chr') or the files' variant IDs"
        )
    log.info("variant set: %d of %d listed variants found", len(ids), len(want))
    return vcf.Dosages(samples, ids, np.ascontiguousarray(np.concatenate(parts).T))


def _variant_set(root: Path, opts) -> list[str]:
    path = root / opts.variant_set
    if not path.resolve().is_relative_to(Path(root).resolve()) or not path.is_file():
        raise MedweaveError(  # files inside the cohort are what the cache key hashes
            f"data.genomics.variant_set={opts.variant_set}: expected a file inside the cohort {root}"
        )
    return [
        line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def prepare_variants(root, train_ids, vocab, out, opts, names, bad, fitting) -> np.ndarray:
    """int8 dosages [subjects with a sample, variants] into ``out``; returns those subjects."""
    files = variant_files(root)
    sets = genotype_files(root, opts)
    if not files and sets and opts.variant_set:
        files = sets
        read = read_selected(sets, _variant_set(root, opts))
    elif not files and sets:
        raise MedweaveError(
            f"{sets[0]}: the variants source (a dense dosage matrix) needs data.genomics.variant_set "
            "(a file listing the variants to read) with PLINK/BGEN genotypes; or use sources [pcs, pgs]"
        )
    elif not files:
        raise MedweaveError(
            f"cohort '{root}' has no {c.VARIANTS_VCF} and no {c.VARIANTS_DIR}/*.vcf.gz|*.bcf "
            "(needed for data.genomics.sources: variants)"
        )
    else:
        read = vcf.read_many(files, opts.dosage_field, bad)
    names.check_samples_exist(set(read.samples))
    sample_subject = names.vcf_subjects(files[0] if len(files) == 1 else root / c.VARIANTS_DIR, read.samples)
    if names.map is not None and (outside := int((sample_subject < 0).sum())):
        log.info(
            "%d of %d VCF samples are not in the sample map (not in this cohort)", outside, len(read.samples)
        )
    subject_ids = np.unique(sample_subject[sample_subject >= 0])
    train = np.isin(subject_ids, train_ids)
    row, known = rows_of(subject_ids, sample_subject)
    if fitting:
        has = np.zeros(len(subject_ids), bool)
        has[row[known]] = True
        fit = known & train[row]
        if not fit.any():
            raise MedweaveError(
                f"{files[0]}: no VCF sample is a train-split subject; variant QC and standardisation "
                "are fitted on train genomes (check the sample names or genomics/sample_map.tsv)"
            )
        d = read.dosages[fit]
        called = d >= 0
        call_rate = called.mean(axis=0)
        alt = np.where(called, d, 0).sum(axis=0) / np.maximum(called.sum(axis=0), 1) / vcf.DOSAGE_SCALE
        af = alt / 2.0
        maf = np.minimum(af, 1.0 - af)
        passing = (call_rate >= opts.min_call_rate) & (maf >= opts.min_maf) & (called.sum(axis=0) > 0)
        if not passing.any():
            raise MedweaveError(
                f"{files[0]}: no variant passes QC on the train split (min_call_rate={opts.min_call_rate}, "
                f"min_maf={opts.min_maf}; {len(read.variant_ids)} variants read, best call rate "
                f"{call_rate.max():.2f}, best MAF {maf.max():.3f}); lower data.genomics.min_call_rate/min_maf"
            )
        log.info("variant QC on train: %d of %d variants kept", int(passing.sum()), len(passing))
        take = np.flatnonzero(passing)
        dose = np.where(called[:, take], d[:, take], np.nan).astype(np.float32) / vcf.DOSAGE_SCALE
        mean = np.nanmean(dose, axis=0)
        sd = np.nanstd(dose, axis=0)
        vocab["variants"] = [read.variant_ids[j] for j in take]
        vocab["variant_mean"] = mean.round(6).tolist()
        vocab["variant_sd"] = np.where(sd > 1e-6, sd, 1.0).round(6).tolist()
        vocab["dosage_scale"] = vcf.DOSAGE_SCALE
        vocab["variant_qc"] = {
            "min_call_rate": opts.min_call_rate,
            "min_maf": opts.min_maf,
            "read": len(read.variant_ids),
            "kept": len(take),
        }
    else:  # the training variants, in training order; a variant this cohort lacks stays missing
        col = {v: j for j, v in enumerate(read.variant_ids)}
        take = np.array([col.get(v, -1) for v in vocab["variants"]], np.int64)
    full = np.full((len(subject_ids), len(take)), vcf.MISSING, np.int8)
    found = take >= 0
    full[np.ix_(row[known], np.flatnonzero(found))] = read.dosages[np.ix_(known, take[found])]
    np.save(out / f"{ARRAYS['variants']}.npy", full)
    return subject_ids
