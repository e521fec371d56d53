"""Genomes for a chosen subset of a registry-scale cohort (``registry_history=true genome_subjects=N``).

A genome centre sequences a subset of a nation: ``genome_subjects`` people, drawn reproducibly from
the cohort, get genotypes at ``n_variants`` sites, written as PLINK 2 or PLINK 1 per chromosome (or
one VCF on request) by the default sandbox's writers (assemble.py). Drawing each genome from the
AR(1) model of genomics.py costs 84 ms at a million variants, a day of CPU for a million people,
and every person needs a genetic score whether sequenced or not. So genomes are mosaics, as real
ones are: a person's two haplotypes copy segments of a few founder haplotypes of their population,
switching founder at recombination hotspots. Then

- the founders (``FOUNDERS`` per population) are drawn once with genomics.draw_genotype (its LD
  model), from population allele frequencies drifted from the panel's (Balding-Nichols, ``FST``):
  population structure for the PCs to find, LD within segments;
- a haplotype's polygenic score is a sum of per-segment founder scores, so everyone's score costs a
  few thousand additions, with no genotype drawn; it enters the outcomes as the AR(1) score does
  (standardised on a fixed reference population), and the PGS Catalog files written beside the
  genotypes hold the panel's true effects: a PGS computed from the files recovers it exactly;
- writing is a row gather from the founders per hotspot cell: no random draw per genotype.

Randomness: ``SeedSequence(seed, spawn_key=(block, 3))`` per registry block of people, so a
person's mosaic is the same whatever ``shard_size`` and ``workers``, in the shards (scores) and in
the writer (genotypes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medweave.data import contract as c
from medweave.sandbox import assemble, genomics

POPULATIONS = 4
FOUNDERS = 32  # founder haplotypes per population (POPULATIONS * FOUNDERS <= 255: uint8 indices)
FST = 0.05  # drift of each population's allele frequencies from the panel's
CELL = 1000  # variants between recombination hotspots
SWITCH = 0.05  # chance a haplotype changes founder at a hotspot (segments of ~20 cells)
REFERENCE_SEED, REFERENCE_PEOPLE = 606, 20_000  # the population the scores are standardised on


@dataclass(frozen=True)
class Founders:
    haplotypes: np.ndarray  # uint8 [POPULATIONS * FOUNDERS, V], 1 = ALT
    cell_start: np.ndarray  # int64 [G]: first variant of each cell (cells never cross chromosomes)
    fresh: np.ndarray  # bool [G]: a chromosome starts here, so the founder is drawn afresh
    cell_scores: dict[str, np.ndarray]  # float64 [H, G]: each score's effects summed over a cell
    moments: dict[str, tuple[float, float]]  # the reference population's score mean and SD

    @property
    def cell_end(self) -> np.ndarray:
        return np.append(self.cell_start[1:], self.haplotypes.shape[1])


_CACHE: dict[tuple, Founders] = {}


def founders(cfg, panel) -> Founders:
    """The cohort's founder panel (cached per process: generate.py builds it before forking)."""
    key = (cfg.seed, panel.n_variants, panel.ld_rho, cfg.genome_chromosomes)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _draw_founders(cfg, panel)
    return _CACHE[key]


def _draw_founders(cfg, panel) -> Founders:
    rng = np.random.default_rng([cfg.seed, 808])
    v = panel.n_variants
    p = np.clip(panel.maf, 1e-6, 1 - 1e-6)
    haplotypes = np.empty((POPULATIONS * FOUNDERS, v), np.uint8)
    for k in range(POPULATIONS):
        drifted = rng.beta(p * (1 - FST) / FST, (1 - p) * (1 - FST) / FST)
        own = dataclasses.replace(panel, maf=np.clip(drifted, 1e-6, 1 - 1e-6))
        for f in range(0, FOUNDERS, 2):
            haplotypes[k * FOUNDERS + f : k * FOUNDERS + f + 2] = genomics.draw_genotype(own, rng)
    chrom = assemble.chromosome_of_variant(v, cfg.genome_chromosomes)
    starts = np.flatnonzero(np.diff(chrom, prepend=0))
    cell_start = np.union1d(np.arange(0, v, CELL), starts)
    fresh = np.isin(cell_start, starts)
    ends = np.append(cell_start[1:], v)
    cell_scores = {}
    for name, effect in panel.effects.items():
        table = np.empty((len(haplotypes), len(cell_start)))
        for g, (a, b) in enumerate(zip(cell_start, ends, strict=True)):
            table[:, g] = haplotypes[:, a:b] @ effect[a:b]
        cell_scores[name] = table
    partial = Founders(haplotypes, cell_start, fresh, cell_scores, {})
    raw = {name: [] for name in cell_scores}
    for b0 in range(0, REFERENCE_PEOPLE, 1000):
        _pop, index = mosaic(partial, REFERENCE_SEED, b0 // 1000, 1000)
        for name, value in _raw_scores(partial, index).items():
            raw[name].append(value)
    moments = {
        name: (float(np.mean(x)), float(np.std(x))) for name, x in raw.items() for x in [np.concatenate(x)]
    }
    return dataclasses.replace(partial, moments=moments)


def mosaic(f: Founders, seed: int, block: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's n people: population [n] and founder index per haplotype and cell, uint8 [n, 2, G]."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, 3)))
    g = len(f.cell_start)
    pop = rng.integers(0, POPULATIONS, n)
    switch = rng.random((n, 2, g)) < SWITCH
    switch[:, :, f.fresh] = True
    choice = rng.integers(0, FOUNDERS, (n, 2, g), dtype=np.uint8)
    last = np.maximum.accumulate(np.where(switch, np.arange(g), 0), axis=2)
    index = np.take_along_axis(choice, last, axis=2)
    index += (pop * FOUNDERS).astype(np.uint8)[:, None, None]
    return pop, index


def _raw_scores(f: Founders, index: np.ndarray) -> dict[str, np.ndarray]:
    cells = np.arange(index.shape[2])
    return {name: table[index, cells].sum(axis=(1, 2)) for name, table in f.cell_scores.items()}


def block_scores(cfg, panel, block: int, n: int) -> dict[str, np.ndarray]:
    """Standardised polygenic scores of a registry block's people (registry.draw_block's genetics)."""
    f = founders(cfg, panel)
    _pop, index = mosaic(f, cfg.seed, block, n)
    return {
        name: (raw - f.moments[name][0]) / f.moments[name][1] for name, raw in _raw_scores(f, index).items()
    }


def genome_rows(cfg) -> np.ndarray:
    """Which subjects (rows in subject-id order) are sequenced: a reproducible random subset."""
    rng = np.random.default_rng([cfg.seed, 909])
    return np.sort(rng.choice(cfg.n_subjects, cfg.genome_subjects, replace=False))


def subset_mosaic(cfg, f: Founders, rows: np.ndarray) -> np.ndarray:
    """Founder indices uint8 [len(rows), 2, G] of the sequenced people, block by block."""
    from medweave.sandbox import registry

    out = np.empty((len(rows), 2, len(f.cell_start)), np.uint8)
    blocks = rows // registry.BLOCK
    for block in tqdm(np.unique(blocks), desc="genome mosaics", unit="block", leave=False):
        n = min(registry.BLOCK, cfg.n_subjects - block * registry.BLOCK)
        _pop, index = mosaic(f, cfg.seed, int(block), n)
        here = np.flatnonzero(blocks == block)
        out[here] = index[rows[here] - block * registry.BLOCK]
    return out


def genotype_codes(f: Founders, index: np.ndarray):
    """``codes(v0, v1, dosage=False)`` -> uint8 [v1 - v0, people], hap0 + 2 * hap1 (or the dosage),
    the code source assemble's writers read.

    Both haplotypes of a person come from their population's founders, so a cell holds at most
    POPULATIONS * FOUNDERS**2 founder pairs: each block is one gather from a small table of pairs
    (variants x pairs), already in the variants x people layout the writers want (a transpose of a
    people x variants gather costs 3x more in numpy).
    """
    starts, ends = f.cell_start, f.cell_end
    local = (index % FOUNDERS).astype(np.uint16)
    pair = (index[:, 0] // FOUNDERS).astype(np.uint16) * FOUNDERS**2 + local[:, 0] * FOUNDERS + local[:, 1]
    pair = np.ascontiguousarray(pair.T)  # [G, people]: one cell's pairs contiguous

    def codes(v0: int, v1: int, dosage: bool = False) -> np.ndarray:
        out = np.empty((v1 - v0, len(index)), np.uint8)
        first = int(np.searchsorted(starts, v0, side="right")) - 1
        for g in range(first, len(starts)):
            a, b = max(v0, int(starts[g])), min(v1, int(ends[g]))
            if a >= b:
                break
            hap = f.haplotypes[:, a:b].T.reshape(b - a, POPULATIONS, 1, FOUNDERS)  # [variants, pop, 1, f]
            table = hap.transpose(0, 1, 3, 2) + hap * (1 if dosage else 2)  # [variants, pop, f0, f1]
            np.take(table.reshape(b - a, -1), pair[g], axis=1, mode="clip", out=out[a - v0 : b - v0])
        return out

    return codes


def write_genomes(root: Path, cfg, panel, subject_ids: np.ndarray, workers: int) -> np.ndarray:
    """The sequenced subset's genotypes (and the PGS files); returns its rows (subject-id order)."""
    from medweave.sandbox.generate import write_pgs_files

    f = founders(cfg, panel)
    rows = genome_rows(cfg)
    codes = genotype_codes(f, subset_mosaic(cfg, f, rows))
    samples = [int(s) for s in subject_ids[rows]]
    if cfg.genomics_format == "vcf":
        assemble.write_vcf(root / c.VARIANTS_VCF, panel, samples, codes)
    else:
        assemble.write_plink(
            root / c.VARIANTS_DIR, panel, samples, codes, cfg.genomics_format, cfg.genome_chromosomes, workers
        )
        write_pgs_files(root, cfg, panel)
    return rows
