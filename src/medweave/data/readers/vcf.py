"""VCF/BCF genotypes through cyvcf2 (htslib): alt-allele dosages per sample, one record at a time.

cyvcf2 hands each record's genotypes and FORMAT fields over as numpy arrays, so a record costs a
few vectorised operations whatever the number of samples; pysam would give one Python object per
sample and genotype. Records stream through a preallocated int8 array with a tqdm bar, so a
60,000-genome VCF is never held as Python objects.

Dosage of a call = number of non-reference alleles (multi-allelic sites count every ALT; 1/2 is 2).
Where a record has no GT, the expected dosage comes from DS (summed over ALTs), else from the
genotype likelihoods GL or PL (posterior under a flat prior). A missing call (./.) and a
half-missing one (1/.) are missing: guessing the other allele would invent data.
Dosages are stored as int8 in units of 1/DOSAGE_SCALE allele (0..2 -> 0..100); -1 = missing.

Files as they are handed out: a VCF compressed with plain gzip (not BGZF), or one without a .tbi or
.csi index, is read by streaming (htslib reads both; only random access needs BGZF and an index),
with a note in the log. Common header slips (a FORMAT field declared with the wrong Number or not
declared at all, a contig missing from the header) are read as the records say, with a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medweave.data.bad_input import BadInput
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)

DOSAGE_SCALE = 50  # int8 units per allele: 0.02-allele resolution, dosages up to 2.54
MISSING = -1
FIELDS = ("auto", "GT", "DS", "GL", "PL")
_PL_END = np.iinfo(np.int32).min + 1  # htslib: int32 min = missing, min + 1 = vector end


@dataclass
class Dosages:
    """What one VCF/BCF holds, as the cache needs it."""

    samples: list[str]
    variant_ids: list[str]  # "chrom:pos:ref:alt[,alt]": stable across files and dbSNP builds
    dosages: np.ndarray  # int8 [samples, variants], units of 1/DOSAGE_SCALE; -1 = missing
    notes: list[str] = field(default_factory=list)  # header slips tolerated, streaming without index


def open_vcf(path: Path):
    """A cyvcf2 reader, or an error naming the file."""
    from cyvcf2 import VCF

    try:
        return VCF(str(path), threads=min(4, os.cpu_count() or 1))
    except Exception as err:  # cyvcf2 raises OSError, ValueError or a bare Exception for bad headers
        raise MedweaveError(f"{path}: not a readable VCF/BCF ({err})") from None


def read_samples(path: Path) -> list[str]:
    vcf = open_vcf(path)
    try:
        return list(vcf.samples)
    finally:
        vcf.close()


NUMBERS = {"GT": ("1",), "DS": ("A", "1"), "GL": ("G",), "PL": ("G",)}  # what the VCF spec declares


def is_bgzf(path: Path) -> bool:
    """BGZF = gzip members with a 'BC' extra field (what tabix needs); plain gzip lacks it."""
    with open(path, "rb") as f:
        head = f.read(18)
    return len(head) >= 14 and head[:2] == b"\x1f\x8b" and bool(head[3] & 4) and head[12:14] == b"BC"


def header_slips(vcf) -> list[str]:
    """FORMAT fields medweave reads whose header line gives the wrong Number (read as records say)."""
    slips = []
    for name, expected in NUMBERS.items():
        try:
            number = str(vcf.get_header_type(name).get("Number", "")).strip('"')
        except KeyError:  # not declared: fine unless records use it (counted while reading)
            continue
        if number not in expected:
            slips.append(f"FORMAT {name} declared Number={number}; expected {' or '.join(expected)}")
    return slips


def read_notes(path: Path) -> list[str]:
    """What validate and the log say about a file before reading it: index, compression, header."""
    notes = []
    path = Path(path)
    if path.name.endswith(".gz") and not is_bgzf(path):
        notes.append("plain gzip, not BGZF: read by streaming")
    elif path.name.endswith((".vcf.gz", ".bcf")) and not _indexed(path):
        notes.append("no .tbi/.csi index: read by streaming")
    vcf = open_vcf(path)
    try:
        notes += header_slips(vcf)
    finally:
        vcf.close()
    return notes


def _indexed(path: Path) -> bool:
    return any(Path(f"{path}{ext}").exists() for ext in (".tbi", ".csi"))


def read_dosages(path: Path, field: str = "auto", bad: BadInput | None = None) -> Dosages:
    """Every record of one VCF/BCF as dosages [samples, variants].

    A record listed twice (same chrom:pos:ref:alt) is a fault: strict mode stops, lenient mode keeps
    the first. A truncated or corrupt file always stops: what follows the damage is unknowable.
    """
    if field not in FIELDS:
        raise MedweaveError(f"data.genomics.dosage_field={field}: expected one of {list(FIELDS)}")
    bad = bad or BadInput()
    vcf = open_vcf(path)
    samples = list(vcf.samples)
    if not samples:
        vcf.close()
        raise MedweaveError(f"{path}: header lists no samples; expected a multi-sample VCF with genotypes")
    notes = read_notes(path)
    declared = {n for n in NUMBERS if _declared(vcf, n)}
    contigs = set(vcf.seqnames)
    total = vcf.num_records if _indexed(path) and is_bgzf(path) else None
    buf = np.empty((total or 1024, len(samples)), np.int8)  # [variants, samples]: one row per record
    ids: list[str] = []
    seen: set[str] = set()
    dup = 0
    n = 0
    bar = tqdm(total=total, desc=f"reading {Path(path).name}", unit="variant", leave=False)
    try:
        for n, record in enumerate(vcf, start=1):  # noqa: B007  (n counts records for the error below)
            key = f"{record.CHROM}:{record.POS}:{record.REF}:{','.join(record.ALT) or '.'}"
            if record.CHROM not in contigs:
                contigs.add(record.CHROM)
                notes.append(f"contig {record.CHROM} not in the header")
            for name in set(record.FORMAT) & set(NUMBERS) - declared:
                declared.add(name)
                notes.append(f"FORMAT {name} not declared in the header (read as numbers)")
            if key in seen:
                dup += 1
                bad.fault(path, f"record {n}", f"variant {key} listed twice; expected one record per site")
                continue
            seen.add(key)
            if len(ids) == len(buf):
                buf = np.concatenate([buf, np.empty_like(buf)])
            buf[len(ids)] = _encode(_record_dosage(record, field, path, n, len(samples)))
            ids.append(key)
            bar.update()
    except Exception as err:  # htslib parse errors and truncated bgzip blocks surface here
        if isinstance(err, MedweaveError):
            raise
        raise MedweaveError(
            f"{path}: record {n + 1}: not readable ({err}); expected a complete, valid VCF/BCF"
        ) from None
    finally:
        bar.close()
        vcf.close()
    if not ids:
        raise MedweaveError(f"{path}: no variant records; expected at least one")
    for note in notes:
        (log.info if "streaming" in note else log.warning)("%s: %s", Path(path).name, note)
    return Dosages(samples, ids, np.ascontiguousarray(buf[: len(ids)].T), notes)


def _declared(vcf, name: str) -> bool:
    try:
        vcf.get_header_type(name)
        return True
    except KeyError:
        return False


def _numbers(values: np.ndarray) -> np.ndarray:
    """FORMAT values as float [samples, k]; an undeclared field arrives as strings ("0.2,0.8", ".")."""
    if values.dtype.kind not in "SUO":
        return values
    text = [
        str(v.decode() if isinstance(v, bytes) else v)
        for v in np.asarray(values).reshape(len(values), -1)[:, 0]
    ]
    parts = [t.split(",") for t in text]
    width = max(len(p) for p in parts)
    out = np.full((len(parts), width), np.nan)
    for i, p in enumerate(parts):
        for j, v in enumerate(p):
            try:
                out[i, j] = float(v)
            except ValueError:
                pass  # "." = missing
    return out


def _encode(dose: np.ndarray) -> np.ndarray:
    """float dosage [samples] (nan = missing) -> int8 units of 1/DOSAGE_SCALE, -1 = missing."""
    scaled = np.rint(np.clip(np.nan_to_num(dose, nan=-1.0), -1.0, 127 / DOSAGE_SCALE) * DOSAGE_SCALE)
    return np.where(np.isnan(dose), MISSING, scaled).astype(np.int8)


def _record_dosage(record, field: str, path: Path, n: int, n_samples: int) -> np.ndarray:
    """Alt-allele dosage per sample as float [samples]; nan = missing."""
    fmt = record.FORMAT
    order = ("GT", "DS", "GL", "PL") if field == "auto" else (field,)
    for name in order:
        if name not in fmt:
            continue
        if name == "GT":
            return _from_gt(record.genotype.array())
        values = _numbers(record.format(name))
        if name == "DS":
            return _from_ds(values)
        likelihoods = values.astype(np.float64)
        if name == "PL":
            likelihoods[values <= _PL_END] = np.nan
            likelihoods = likelihoods / -10.0
        return _from_likelihoods(likelihoods, 1 + len(record.ALT))
    # No usable field: every sample is missing at this site (a sites-only record, say).
    if field != "auto":
        raise MedweaveError(
            f"{path}: record {n}: FORMAT has no {field} (data.genomics.dosage_field={field}); "
            f"found {fmt or 'none'}"
        )
    return np.full(n_samples, np.nan, np.float32)


def _from_gt(gt: np.ndarray) -> np.ndarray:
    """cyvcf2 genotype array int16 [samples, ploidy + 1 (phased flag)]: -1 missing, -2 padding."""
    alleles = gt[:, :-1]
    dose = (alleles > 0).sum(axis=1).astype(np.float32)
    missing = (alleles == -1).any(axis=1) | (alleles < -1).all(axis=1)
    dose[missing] = np.nan
    return dose


def _from_ds(ds: np.ndarray) -> np.ndarray:
    """DS [samples, ALTs] (Number=A, or 1): dosage of any non-reference allele = sum over ALTs."""
    seen = ~np.isnan(ds)
    dose = np.where(seen, ds, 0.0).sum(axis=1)
    return np.where(seen.any(axis=1), dose, np.nan).astype(np.float32)


def _genotype_counts(n_alleles: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-reference allele counts per genotype in VCF order: diploid (j <= k) and haploid."""
    diploid = [(j > 0) + (k > 0) for k in range(n_alleles) for j in range(k + 1)]
    haploid = [int(a > 0) for a in range(n_alleles)]
    return np.array(diploid, np.float64), np.array(haploid, np.float64)


def _from_likelihoods(log10: np.ndarray, n_alleles: int) -> np.ndarray:
    """Expected dosage from log10 genotype likelihoods [samples, genotypes] (flat prior)."""
    diploid, haploid = _genotype_counts(n_alleles)
    width = (~np.isnan(log10)).sum(axis=1)
    dose = np.full(len(log10), np.nan)
    for counts in (diploid, haploid):
        rows = np.flatnonzero(width == len(counts))
        if len(rows) and log10.shape[1] >= len(counts):
            ll = log10[rows, : len(counts)]
            weight = 10.0 ** (ll - ll.max(axis=1, keepdims=True))
            dose[rows] = (weight * counts).sum(axis=1) / weight.sum(axis=1)
    return dose.astype(np.float32)


def read_many(paths: list[Path], field: str = "auto", bad: BadInput | None = None) -> Dosages:
    """Several files (per chromosome, or per sequencing batch) merged by sample and by site.

    A sample absent from a file is missing at that file's sites. A site may sit in several files
    for different samples; the same sample called at the same site in two files is a fault (strict:
    stop; lenient: keep the first file's call).
    """
    bad = bad or BadInput()
    parts = [read_dosages(p, field, bad) for p in paths]
    if len(parts) == 1:
        return parts[0]
    samples: dict[str, int] = {}
    sites: dict[str, int] = {}
    for part in parts:
        for s in part.samples:
            samples.setdefault(s, len(samples))
        for key in part.variant_ids:
            sites.setdefault(key, len(sites))
    absent = np.int8(-128)  # no file has called this sample here (yet)
    out = np.full((len(samples), len(sites)), absent, np.int8)
    first: dict[int, Path] = {}
    for path, part in zip(paths, parts, strict=True):
        rows = np.array([samples[s] for s in part.samples])
        cols = np.array([sites[k] for k in part.variant_ids])
        block = out[np.ix_(rows, cols)]
        taken = block != absent
        if taken.any():
            r, k = np.argwhere(taken)[0]
            bad.fault(
                path,
                f"sample {r}, variant {part.variant_ids[k]}",
                f"already called in {first[int(cols[k])].name}; expected each sample's call at a site "
                "in one file",
                count=int(taken.sum()),
            )
        out[np.ix_(rows, cols)] = np.where(taken, block, part.dosages)
        for col in cols:
            first.setdefault(int(col), path)
    out[out == absent] = MISSING
    return Dosages(list(samples), list(sites), out)


class DosageReader:
    """A VCF/BCF as a GenotypeReader (readers/genotypes.py), for the pcs and pgs sources.

    VCF has no random access by variant without an index walk, so the file is read whole into
    int8 first (as the variants source does): fine for the VCFs tests and small studies use; at
    genome-centre scale the genotypes come as PLINK or BGEN, which stream.
    """

    def __init__(self, path: Path, field: str = "auto"):
        from medweave.data.readers.genotypes import VariantTable, normalise_chrom

        self.path = Path(path)
        read = read_dosages(self.path, field)
        self.samples = read.samples
        parts = [k.split(":") for k in read.variant_ids]
        self.variants = VariantTable(
            chrom=normalise_chrom([p[0] for p in parts]),
            pos=np.array([int(p[1]) for p in parts], np.int64),
            id=np.array(["."] * len(parts)),
            ref=np.array([p[2].upper() for p in parts]),
            alt=np.array([p[3].upper() for p in parts]),
        )
        self._dosages = read.dosages  # int8 [samples, variants]

    def blocks(self, size: int, select: np.ndarray | None = None):
        from medweave.data.readers.genotypes import selected_blocks

        for index in selected_blocks(select, len(self.variants), size):
            d = self._dosages[:, index].T.astype(np.float32)
            yield index, np.where(d < 0, np.nan, d / DOSAGE_SCALE).astype(np.float32)

    def close(self) -> None:
        self._dosages = None
