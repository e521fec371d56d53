"""Genotypes with a realistic allele-frequency spectrum, local LD, polygenic scores, expression.

Minor-allele frequencies are log-uniform on [0.005, 0.5], so most variants are rare. Nearby
variants are correlated: each haplotype is a thresholded Gaussian AR(1) process along the
chromosome (correlation ``ld_rho`` between neighbours). Each disease has a score made of small
effects on every variant (correlated between diseases: pleiotropy) plus a few large-effect common
variants of its own. Scores are standardised analytically, so a person's score never depends on
who else is in the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtri

# Large-effect variants per score and the range of their |log-odds| per allele.
LARGE_EFFECTS = {"cvd": (6, 0.5, 0.8), "t1d": (4, 0.7, 1.1)}
SMALL_EFFECT_SD = 0.02
PLEIOTROPY = 0.5  # correlation of small effects between the two scores


@dataclass(frozen=True)
class VariantPanel:
    chrom: str
    positions: np.ndarray  # int64 [V], 1-based, increasing
    ref: np.ndarray  # str [V]
    alt: np.ndarray  # str [V]
    maf: np.ndarray  # float [V]
    effects: dict[str, np.ndarray]  # score name -> log-odds per alt allele [V], before standardising
    ld_rho: float

    @property
    def n_variants(self) -> int:
        return len(self.positions)

    def score_mean_sd(self, name: str) -> tuple[float, float]:
        return self._score_moments[name]

    # Per-panel constants, computed once instead of once per person (a million-variant panel
    # spent most of each genome on them); the values, and so the cohort, are unchanged.
    @cached_property
    def _score_moments(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name, effect in self.effects.items():
            mean = float(np.sum(2 * self.maf * effect))
            sd = float(np.sqrt(np.sum(2 * self.maf * (1 - self.maf) * effect**2)))
            out[name] = (mean, sd)
        return out

    @cached_property
    def threshold(self) -> np.ndarray:
        """Gaussian quantile of each MAF: a haplotype carries ALT where its AR(1) value is below."""
        return ndtri(self.maf)


def make_panel(n_variants: int, ld_rho: float, seed: int) -> VariantPanel:
    rng = np.random.default_rng([seed, 101])
    maf = np.exp(rng.uniform(np.log(0.005), np.log(0.5), n_variants))
    positions = np.cumsum(rng.integers(200, 5000, n_variants)) + 10_000
    bases = np.array(list("ACGT"))
    ref = rng.choice(bases, n_variants)
    alt = bases[(np.searchsorted(bases, ref) + rng.integers(1, 4, n_variants)) % 4]
    shared = rng.normal(0.0, SMALL_EFFECT_SD, n_variants)
    own = rng.normal(0.0, SMALL_EFFECT_SD, (len(LARGE_EFFECTS), n_variants))
    common = rng.permutation(np.flatnonzero(maf > 0.2))
    effects, used = {}, 0
    for k, (name, (count, low, high)) in enumerate(LARGE_EFFECTS.items()):
        effect = np.sqrt(PLEIOTROPY) * shared + np.sqrt(1 - PLEIOTROPY) * own[k]
        large = common[used : used + count]  # disjoint sets: each disease has its own
        used += len(large)
        effect[large] = rng.choice([-1.0, 1.0], len(large)) * rng.uniform(low, high, len(large))
        effects[name] = effect
    return VariantPanel("chr1", positions, ref, alt, maf, effects, ld_rho)


def draw_genotype(panel: VariantPanel, rng: np.random.Generator) -> np.ndarray:
    """Alt-allele counts per haplotype, int8 [2, V] (sum over axis 0 is the dosage)."""
    noise = rng.standard_normal((2, panel.n_variants))
    rho = panel.ld_rho
    # AR(1) along the chromosome with unit stationary variance (the first step starts there).
    noise[:, 0] /= np.sqrt(1 - rho**2)
    z = lfilter([np.sqrt(1 - rho**2)], [1, -rho], noise, axis=1)
    return (z < panel.threshold).astype(np.int8)


def polygenic_scores(panel: VariantPanel, haplotypes: np.ndarray) -> dict[str, float]:
    dosage = haplotypes.sum(0)
    scores = {}
    for name, effect in panel.effects.items():
        mean, sd = panel.score_mean_sd(name)
        scores[name] = float((dosage @ effect - mean) / sd)
    return scores


@dataclass(frozen=True)
class ExpressionModel:
    """log2 expression per gene = baseline + cis-eQTL dosage effect + loading on m + noise."""

    genes: list[str]
    baseline: np.ndarray  # [G]
    eqtl_variant: np.ndarray  # int [G], the cis variant
    eqtl_effect: np.ndarray  # [G], log2 fold per alt allele
    metabolic_loading: np.ndarray  # [G], nonzero for a third of the genes
    noise_sd: float = 0.5


def make_expression_model(panel: VariantPanel, n_genes: int, seed: int) -> ExpressionModel:
    rng = np.random.default_rng([seed, 202])
    loading = np.where(rng.random(n_genes) < 1 / 3, rng.normal(0, 0.6, n_genes), 0.0)
    return ExpressionModel(
        genes=[f"GENE{g:05d}" for g in range(n_genes)],
        baseline=rng.uniform(2, 12, n_genes),
        eqtl_variant=np.sort(rng.choice(panel.n_variants, n_genes, replace=n_genes > panel.n_variants)),
        eqtl_effect=rng.normal(0, 0.4, n_genes),
        metabolic_loading=loading,
    )


def draw_expression(
    model: ExpressionModel, haplotypes: np.ndarray, metabolic: float, rng: np.random.Generator
) -> np.ndarray:
    dosage = haplotypes.sum(0)[model.eqtl_variant]
    noise = rng.normal(0, model.noise_sd, len(model.genes))
    return (model.baseline + model.eqtl_effect * dosage + model.metabolic_loading * metabolic + noise).astype(
        np.float32
    )
