"""Where a cohort's genomics files sit (data/contract.py names the paths) and which sources it has."""

from __future__ import annotations

import re
from pathlib import Path

from medweave.data import contract as c
from medweave.data.genomics.options import SOURCES, GenomicsOptions
from medweave.errors import MedweaveError


def variant_files(root: Path) -> list[Path]:
    """genomics/variants.vcf.gz (or .bcf) and the per-chromosome files under genomics/variants/."""
    single = [root / p for p in (c.VARIANTS_VCF, c.VARIANTS_BCF) if (root / p).is_file()]
    folder = root / c.VARIANTS_DIR
    per_chrom = (
        [p for p in folder.iterdir() if p.is_file() and p.name.endswith((".vcf.gz", ".vcf", ".bcf"))]
        if folder.is_dir()
        else []
    )

    def natural(p: Path) -> list:  # chr2 before chr10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]

    return single + sorted(per_chrom, key=natural)


def sample_map_file(root: Path, opts: GenomicsOptions) -> Path | None:
    if opts.sample_map:
        path = root / opts.sample_map
        if not path.resolve().is_relative_to(Path(root).resolve()):
            raise MedweaveError(  # files inside the cohort are what the cache key hashes
                f"data.genomics.sample_map={opts.sample_map}: expected a path inside the cohort {root}"
            )
        if not path.is_file():
            raise MedweaveError(f"data.genomics.sample_map={opts.sample_map}: no such file under {root}")
        return path
    return next((root / p for p in c.SAMPLE_MAPS if (root / p).is_file()), None)


def available_sources(root: Path) -> list[str]:
    have = {
        "variants": bool(variant_files(root)),
        "expression": (root / c.EXPRESSION).is_file(),
        "embeddings": (root / c.EMBEDDINGS).is_file(),
    }
    return [s for s in SOURCES if have[s]]
