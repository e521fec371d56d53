"""``data.genomics``: which sources reach the model and how each is fitted (checked whole, at once)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from medweave.data.readers import vcf
from medweave.errors import MedweaveError

SOURCES = ("variants", "pcs", "pgs", "expression", "embeddings")
TRANSFORMS = ("cpm", "log1p", "zscore")
ARRAYS = {
    "variants": "genomics",
    "pcs": "genomics_pcs",
    "pgs": "genomics_pgs",
    "expression": "genomics_expression",
    "embeddings": "genomics_embeddings",
}


@dataclass(frozen=True)
class GenomicsOptions:
    """``data.genomics`` (configs/data/cohort.yaml says what each key does)."""

    sources: tuple[str, ...] | None = None
    sample_map: str | None = None
    dosage_field: str = "auto"
    min_call_rate: float = 0.0
    min_maf: float = 0.0
    expression_orientation: str = "auto"
    expression_transform: tuple[str, ...] = ("zscore",)
    embeddings_transform: tuple[str, ...] = ("zscore",)
    chromosomes: tuple[str, ...] | None = None  # a per-chromosome set must hold these (None: 1..highest)
    pcs: int = 20  # principal components (the pcs source)
    pca_power_iterations: int = 2
    pca_oversample: int = 10
    pca_min_maf: float = 0.01  # on train genomes: rare variants add noise, not ancestry
    pca_max_variants: int = 200_000  # evenly thinned beyond this (a stand-in for LD pruning)
    pgs_files: tuple[str, ...] | None = None  # under the cohort; None: genomics/pgs/*.txt[.gz]
    pgs_ambiguous: str = "drop"  # A/T and C/G sites: drop | keep (assume the target's strand)
    pgs_min_overlap: float = 0.75  # share of a score's variants that must match the genotypes
    genome_build: str | None = None  # the genotypes' build (GRCh37/GRCh38); None: dataset.json's
    variant_set: str | None = None  # variants source from PLINK/BGEN: file of keys or IDs, one a line
    seed: int = 0  # the PCA's random projection

    @classmethod
    def from_dict(cls, options: dict | None) -> GenomicsOptions:
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        for key in options:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean '{near[0]}'?" if near else ""
                raise MedweaveError(f"data.genomics.{key}: unknown option; valid: {known}.{hint}")
        for key in ("sources", "expression_transform", "embeddings_transform", "chromosomes", "pgs_files"):
            if options.get(key) is not None:
                options[key] = tuple(options[key])
        opts = cls(**options)
        problems = [
            f"sources: '{s}' is not one of {list(SOURCES)}" for s in opts.sources or () if s not in SOURCES
        ]
        for key in ("expression_transform", "embeddings_transform"):
            problems += [
                f"{key}: '{t}' is not one of {list(TRANSFORMS)}"
                for t in getattr(opts, key)
                if t not in TRANSFORMS
            ]
        if "cpm" in opts.embeddings_transform or "log1p" in opts.embeddings_transform:
            problems.append("embeddings_transform: only zscore applies to embeddings")
        for key in ("min_call_rate", "min_maf"):
            if not 0.0 <= getattr(opts, key) <= (1.0 if key == "min_call_rate" else 0.5):
                problems.append(
                    f"{key}={getattr(opts, key)}: expected 0..{1.0 if key == 'min_call_rate' else 0.5}"
                )
        if opts.pgs_ambiguous not in ("drop", "keep"):
            problems.append(f"pgs_ambiguous={opts.pgs_ambiguous}: expected drop or keep")
        if not 0.0 <= opts.pgs_min_overlap <= 1.0:
            problems.append(f"pgs_min_overlap={opts.pgs_min_overlap}: expected 0..1")
        if opts.pcs < 1 or opts.pca_power_iterations < 0 or opts.pca_oversample < 0:
            problems.append("pcs >= 1, pca_power_iterations >= 0 and pca_oversample >= 0 expected")
        if opts.dosage_field not in vcf.FIELDS:
            problems.append(f"dosage_field={opts.dosage_field}: expected one of {list(vcf.FIELDS)}")
        if problems:
            raise MedweaveError("data.genomics: " + "; ".join(problems))
        return opts
