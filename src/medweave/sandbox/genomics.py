"""Genotypes with a realistic allele-frequency spectrum, local LD and a polygenic score.

Minor-allele frequencies are log-uniform on [0.005, 0.5], so most variants are rare. Nearby
variants are correlated: each haplotype is a thresholded Gaussian AR(1) process along the
chromosome (correlation ``ld_rho`` between neighbours). Effects: a few large-effect common
variants plus many small effects; the score is standardised analytically, so a person's score
never depends on who else is in the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtri


@dataclass(frozen=True)
class VariantPanel:
    chrom: str
    positions: np.ndarray  # int64 [V], 1-based, increasing
    ref: np.ndarray  # str [V]
    alt: np.ndarray  # str [V]
    maf: np.ndarray  # float [V]
    effect: np.ndarray  # float [V], log-odds per alt allele before standardisation
    ld_rho: float

    @property
    def n_variants(self) -> int:
        return len(self.positions)

    def score_mean_sd(self) -> tuple[float, float]:
        mean = float(np.sum(2 * self.maf * self.effect))
        sd = float(np.sqrt(np.sum(2 * self.maf * (1 - self.maf) * self.effect**2)))
        return mean, sd


def make_panel(n_variants: int, n_large_effect: int, ld_rho: float, seed: int) -> VariantPanel:
    rng = np.random.default_rng([seed, 101])
    maf = np.exp(rng.uniform(np.log(0.005), np.log(0.5), n_variants))
    positions = np.cumsum(rng.integers(200, 5000, n_variants)) + 10_000
    bases = np.array(list("ACGT"))
    ref = rng.choice(bases, n_variants)
    alt = np.array([rng.choice(bases[bases != r]) for r in ref])
    effect = rng.normal(0.0, 0.02, n_variants)
    common = np.flatnonzero(maf > 0.2)
    large = rng.choice(common, size=min(n_large_effect, len(common)), replace=False)
    effect[large] = rng.choice([-1.0, 1.0], len(large)) * rng.uniform(0.5, 0.8, len(large))
    return VariantPanel("chr1", positions, ref, alt, maf, effect, ld_rho)


def draw_genotype(panel: VariantPanel, rng: np.random.Generator) -> np.ndarray:
    """Alt-allele counts per haplotype, int8 [2, V] (sum over axis 0 is the dosage)."""
    noise = rng.standard_normal((2, panel.n_variants))
    rho = panel.ld_rho
    # AR(1) along the chromosome with unit stationary variance (the first step starts there).
    noise[:, 0] /= np.sqrt(1 - rho**2)
    z = lfilter([np.sqrt(1 - rho**2)], [1, -rho], noise, axis=1)
    return (z < ndtri(panel.maf)).astype(np.int8)


def polygenic_score(panel: VariantPanel, haplotypes: np.ndarray) -> float:
    mean, sd = panel.score_mean_sd()
    return float((haplotypes.sum(0) @ panel.effect - mean) / sd)
