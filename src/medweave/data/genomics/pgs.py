"""The pgs source: polygenic scores from PGS Catalog scoring files, matched to the genotypes.

Scoring files are read with the PGS Catalog's own ``pgscatalog-core`` (ScoringFile: the header with
its genome build, harmonised hm_chr/hm_pos columns when present, per-row validation), so every
format version the Catalog publishes reads as the Catalog means it. Matching is ours, vectorised
(pgscatalog-match works on polars frames of a whole target and writes files; medweave matches in
memory against the readers' variant tables), with the same rules as pgsc_calc:

    effect allele = ALT, other = REF            weight +w on the ALT dosage
    effect allele = REF, other = ALT (swap)      w * (2 - dosage)
    the same after complementing both alleles    a strand flip, then as above
    A/T or C/G (palindromic)                     strand unknowable: dropped (pgs_ambiguous=drop),
                                                 or matched as written (keep)

The score's genome build must be the genotypes' (GRCh37 positions against GRCh38 genotypes match
the wrong sites). A missing call counts the train mean dosage. Scores are z-scored on train; the
matched variants, weights and means travel in the vocabulary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data.genomics.genotypes import Genotypes
from medweave.data.genomics.pca import pack, unpack
from medweave.data.readers.genotypes import budget_blocks, normalise_chrom
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

BUILDS = {"GRCH37": "GRCh37", "HG19": "GRCh37", "GRCH38": "GRCh38", "HG38": "GRCh38"}
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def _build(text) -> str | None:
    if text is None:
        return None
    name = getattr(text, "value", None) or str(text)
    name = name.split(".")[-1]
    return BUILDS.get(name.upper().replace("_", ""), name)


def cohort_build(root: Path, opts) -> str | None:
    if opts.genome_build:
        return _build(opts.genome_build)
    meta = root / c.DATASET_METADATA
    if meta.is_file():
        return _build(json.loads(meta.read_text()).get("medweave", {}).get("genome_build"))
    return None


def read_score(path: Path):
    """(name, build, chrom, pos, effect, other, weight) of one scoring file, through pgscatalog-core."""
    from pgscatalog.core import ScoringFile

    chrom, pos, effect, other, weight = [], [], [], [], []
    try:
        sf = ScoringFile(path)
        harmonised = sf.is_harmonised
        for r in sf.variants:  # one validated row at a time: a million-variant score is never objects
            if r.is_complex or r.is_non_additive:
                raise MedweaveError(
                    f"{path}: row {r.row_nr}: a non-additive or complex variant (haplotype, dominant); "
                    "expected an additive score"
                )
            at = r.hm_pos if harmonised else r.chr_position
            if at is None:
                raise MedweaveError(
                    f"{path}: row {r.row_nr}: no chr_position; expected positions (rsID-only files need "
                    "the PGS Catalog's harmonised version, *_hmPOS_<build>.txt.gz)"
                )
            chrom.append(str((r.hm_chr if harmonised else r.chr_name) or ""))
            pos.append(int(at))
            effect.append(str(r.effect_allele).upper())
            other.append(str(r.other_allele).upper() if r.other_allele else "")
            weight.append(float(r.effect_weight))
    except MedweaveError:
        raise
    except Exception as err:  # pgscatalog raises its own ScoreFormatError, pydantic ValidationError
        first = " ".join(str(err).split()[:24]) or type(err).__name__
        raise MedweaveError(
            f"{path}: not a readable PGS Catalog scoring file ({first}); expected header lines "
            "('#genome_build=...') and columns chr_name, chr_position, effect_allele, effect_weight"
        ) from None
    header = sf.header
    build = _build(header.HmPOS_build if harmonised and header.HmPOS_build else header.genome_build)
    name = header.pgs_id or Path(path).name.split(".")[0]
    chrom_a = normalise_chrom(chrom)
    return name, build, chrom_a, np.array(pos, np.int64), np.array(effect), np.array(other), np.array(weight)


def match(g: Genotypes, path: Path, opts, genotype_build: str | None) -> dict:
    """Match one scoring file: the vocabulary entry (keys, signed weights, offset) and counts."""
    name, build, chrom, pos, effect, other, weight = read_score(path)
    if build and genotype_build and build != genotype_build:
        raise MedweaveError(
            f"{path}: scoring file is on {build} but the genotypes are on {genotype_build}; expected the "
            f"same build (the PGS Catalog publishes harmonised files per build: *_hmPOS_{genotype_build}"
            ".txt.gz)"
        )
    if not (build and genotype_build):
        log.warning(
            "%s: genome build not checked (score: %s, genotypes: %s; set data.genomics.genome_build)",
            Path(path).name,
            build or "unknown",
            genotype_build or "unknown",
        )
    site: dict[tuple[str, int], list[int]] = {}  # a position may carry several score rows (alleles)
    for i, (ch, p) in enumerate(zip(chrom, pos.tolist(), strict=True)):
        site.setdefault((ch, p), []).append(i)
    taken = np.zeros(len(pos), bool)
    keys, signs, weights = [], [], []
    counts = {"variants": len(pos), "matched": 0, "swapped": 0, "flipped": 0, "ambiguous_dropped": 0}
    palindromic = {"AT", "TA", "CG", "GC"}
    for r in g.readers:
        v = r.variants
        hits = [
            (j, i)
            for j, (ch, p) in enumerate(zip(v.chrom, v.pos.tolist(), strict=True))
            for i in site.get((ch, p), ())
        ]
        for j, i in hits:
            if taken[i]:
                continue
            ref, alt, ea, oa = v.ref[j], v.alt[j], effect[i], other[i]
            ambiguous = (ref + alt) in palindromic
            if ambiguous and opts.pgs_ambiguous == "drop":
                counts["ambiguous_dropped"] += 1
                taken[i] = True
                continue
            sign = None
            for flipped, (e, o) in enumerate(
                ((ea, oa), (ea.translate(_COMPLEMENT), oa.translate(_COMPLEMENT)))
            ):
                if flipped and ambiguous:
                    break  # as written only: a flip of A/T is A/T again
                if e == alt and o in ("", ref):
                    sign = 1.0
                elif e == ref and o in ("", alt):
                    sign = -1.0
                if sign is not None:
                    counts["flipped"] += flipped
                    break
            if sign is None:
                continue
            taken[i] = True
            counts["matched"] += 1
            counts["swapped"] += sign < 0
            keys.append(f"{v.chrom[j]}:{v.pos[j]}:{ref}:{alt}")
            signs.append(sign)
            weights.append(weight[i])
    overlap = counts["matched"] / max(len(pos), 1)
    if overlap < opts.pgs_min_overlap:
        raise MedweaveError(
            f"{path}: {counts['matched']} of {len(pos)} score variants match the genotypes "
            f"({overlap:.0%}; {counts['ambiguous_dropped']} ambiguous dropped); expected at least "
            f"data.genomics.pgs_min_overlap={opts.pgs_min_overlap:.0%} (check the build and chromosome names)"
        )
    log.info("%s: %s", name, ", ".join(f"{k} {v}" for k, v in counts.items()))
    signed = np.array(weights) * np.array(signs)
    offset = float(np.sum(np.array(weights)[np.array(signs) < 0] * 2.0)) if keys else 0.0
    return {
        "name": name,
        "build": build or genotype_build,
        "variants": keys,
        "weight": pack(signed),
        "offset": offset,
        "counts": counts,
    }


def score(g: Genotypes, entry: dict, train: np.ndarray | None) -> np.ndarray:
    """Raw score per subject: sum of signed weight x dosage (+ offset), missing = train mean dosage.

    With ``train`` the per-variant train means are fitted into ``entry``; without, they are read.
    Each block is used in the file's own sample order (no gather): the train means are one
    matrix-vector product, the scores another; a subject absent from a file set counts its means.
    """
    weight = unpack(entry["weight"])
    mean = np.zeros(len(weight), np.float32) if train is not None else unpack(entry["mean"])
    total = np.zeros(g.n_subjects, np.float64)
    for i, (index, pos) in enumerate(g.locate(entry["variants"])):
        order = np.argsort(index)
        index, pos = index[order], pos[order]
        r, rows = g.readers[i], g.rows[i]
        known = np.flatnonzero(rows >= 0)
        train_w = np.zeros(len(rows), np.float32)
        if train is not None:
            train_w[known] = train[rows[known]]
        absent = np.ones(g.n_subjects, bool)
        absent[rows[known]] = False
        per_sample = np.zeros(len(rows), np.float64)
        at = 0
        for _ix, block in budget_blocks(r, index):
            p = pos[at : at + len(block)]
            at += len(block)
            missing = None if block.min(initial=0.0) >= 0 else ~(block >= 0)
            if missing is not None:
                block[missing] = 0.0
            if train is not None:
                n = (~missing).astype(np.float32) @ train_w if missing is not None else train_w.sum()
                mean[p] = np.where(n > 0, (block @ train_w) / np.maximum(n, 1), 0.0)
            if missing is not None:
                np.copyto(block, np.broadcast_to(mean[p][:, None], block.shape), where=missing)
            per_sample += weight[p] @ block
            total[absent] += float(weight[p] @ mean[p])
        total[rows[known]] += per_sample[known]
    if train is not None:
        entry["mean"] = pack(mean)
    return total + entry["offset"]


def fit_scores(g: Genotypes, files: list[Path], train: np.ndarray, opts, build, vocab: dict) -> np.ndarray:
    """Every scoring file matched and scored; float32 [subjects, scores] z-scored on train."""
    if not files:
        raise MedweaveError(
            f"data.genomics.sources has pgs but there is no scoring file ({c.PGS_DIR}/*.txt[.gz] or "
            "data.genomics.pgs_files)"
        )
    entries, columns = [], []
    for path in files:
        entry = match(g, path, opts, build)
        raw = score(g, entry, train)
        have = g.present() & train
        entry["score_mean"] = float(raw[have].mean())
        entry["score_sd"] = float(raw[have].std()) or 1.0
        columns.append((raw - entry["score_mean"]) / entry["score_sd"])
        entries.append(entry)
    vocab["pgs"] = entries
    return np.stack(columns, axis=1).astype(np.float32)


def apply_scores(g: Genotypes, vocab: dict, build: str | None = None) -> np.ndarray:
    """The fitted scores on another cohort (evaluation): its genotypes must be on the scores' build."""
    for e in vocab["pgs"]:
        if build and e.get("build") and build != e["build"]:
            raise MedweaveError(
                f"{g.readers[0].path}: genotypes on {build}, but the model's score {e['name']} was matched "
                f"on {e['build']}; expected the training cohort's build"
            )
    cols = [(score(g, e, None) - e["score_mean"]) / e["score_sd"] for e in vocab["pgs"]]
    return np.stack(cols, axis=1).astype(np.float32)
