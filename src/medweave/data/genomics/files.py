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


GENOTYPE_SUFFIXES = (".pgen", ".bed", ".bgen")  # PLINK 2, PLINK 1, BGEN: one file names its set
_CHROM = re.compile(r"(?:^|[._-])(?:chr)?(\d{1,2}|X|Y|MT?)$", re.IGNORECASE)


def genotype_files(root: Path, opts: GenomicsOptions) -> list[Path]:
    """The PLINK/BGEN sets (genomics/variants.pgen|.bed|.bgen, or genomics/variants/<chrom>.*),
    else the VCFs; one format per cohort. A per-chromosome set must not skip a chromosome."""
    single = [
        root / f"{c.VARIANTS_STEM}{s}"
        for s in GENOTYPE_SUFFIXES
        if (root / f"{c.VARIANTS_STEM}{s}").is_file()
    ]
    folder = root / c.VARIANTS_DIR
    per_chrom = [p for p in folder.iterdir() if p.suffix in GENOTYPE_SUFFIXES] if folder.is_dir() else []
    found = single + per_chrom
    formats = sorted({p.suffix for p in found})
    if len(formats) > 1:
        raise MedweaveError(
            f"{root / 'genomics'}: genotypes in several formats {formats}; "
            "expected one (PLINK 2, PLINK 1 or BGEN)"
        )
    if not found:
        return variant_files(root)
    if single and per_chrom:
        raise MedweaveError(
            f"{root / 'genomics'}: both {single[0].name} and per-chromosome files under variants/; "
            "expected one of the two"
        )
    if per_chrom:
        per_chrom = _check_chromosomes(folder, per_chrom, opts.chromosomes)
    return single or per_chrom


def chromosome_of(path: Path) -> str | None:
    m = _CHROM.search(path.name[: -len(path.suffix)])
    return m.group(1).upper().removeprefix("CHR") if m else None


def _check_chromosomes(folder: Path, files: list[Path], expected) -> list[Path]:
    by_chrom: dict[str, Path] = {}
    for p in files:
        chrom = chromosome_of(p)
        if chrom is None:
            raise MedweaveError(
                f"{p}: no chromosome in the file name; expected e.g. chr1{p.suffix} or data_chr22{p.suffix}"
            )
        if chrom in by_chrom:
            raise MedweaveError(
                f"{p}: chromosome {chrom} again (also {by_chrom[chrom].name}); expected one set each"
            )
        by_chrom[chrom] = p
    autosomes = sorted(int(k) for k in by_chrom if k.isdigit())
    want = [str(k) for k in expected] if expected else [str(k) for k in range(1, (autosomes or [0])[-1] + 1)]
    absent = [k for k in want if k.upper().removeprefix("CHR") not in by_chrom]
    if absent:
        why = "data.genomics.chromosomes lists" if expected else "the set runs up to chromosome"
        tail = f" {list(expected)}" if expected else f" {autosomes[-1]}"
        raise MedweaveError(
            f"{folder}: chromosome {absent[0]} missing from the per-chromosome set "
            f"({len(absent)} missing in all; {why}{tail}); expected one {files[0].suffix} set per chromosome"
        )

    def order(k: str):
        return (0, int(k), "") if k.isdigit() else (1, 0, k)

    return [by_chrom[k] for k in sorted(by_chrom, key=order)]


def pgs_files(root: Path, opts: GenomicsOptions) -> list[Path]:
    """Scoring files: data.genomics.pgs_files (paths under the cohort), else genomics/pgs/*."""
    if opts.pgs_files:
        return [_file_in_cohort(root, name, f"data.genomics.pgs_files: {name}") for name in opts.pgs_files]
    folder = root / c.PGS_DIR
    return sorted(p for p in folder.iterdir() if p.is_file() and ".txt" in p.name) if folder.is_dir() else []


def sample_map_file(root: Path, opts: GenomicsOptions) -> Path | None:
    if opts.sample_map:
        return _file_in_cohort(root, opts.sample_map, f"data.genomics.sample_map={opts.sample_map}")
    return next((root / p for p in c.SAMPLE_MAPS if (root / p).is_file()), None)


def available_sources(root: Path, opts: GenomicsOptions) -> list[str]:
    """What ``sources: null`` means: dosages for VCF cohorts (as before), PCs (+ PGS when there are
    scoring files) for PLINK/BGEN cohorts, whose variant counts rule out a dense matrix."""
    genotypes = genotype_files(root, opts)
    dense = bool(genotypes) and not genotypes[0].name.endswith(GENOTYPE_SUFFIXES)
    have = {
        "variants": dense,
        "pcs": bool(genotypes) and not dense,
        "pgs": bool(genotypes) and not dense and bool(pgs_files(root, opts)),
        "expression": (root / c.EXPRESSION).is_file(),
        "embeddings": (root / c.EMBEDDINGS).is_file(),
    }
    return [s for s in SOURCES if have[s]]


def _file_in_cohort(root: Path, relative: str, key: str) -> Path:
    """A file the config names, which must sit inside the cohort: the files there are what the
    cache key covers."""
    path = root / relative
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise MedweaveError(f"{key}: expected a path inside the cohort {root}")
    if not path.is_file():
        raise MedweaveError(f"{key}: no such file under {root}")
    return path
