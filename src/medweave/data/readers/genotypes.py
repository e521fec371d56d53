"""What every genotype reader hands over: the samples, the variant table, and blocks of dosages.

A genome centre's files hold far more than memory (60,000 genomes x 1,000,000 variants is 60 GB
as int8), so readers never return the whole matrix: ``blocks`` yields a block of variants x all
samples at a time, and the caller sizes the block to a memory budget (``block_size``). Dosage =
expected count of the ALT allele (PLINK 2 ALT, PLINK 1 A1, BGEN's second allele) as float32,
nan where the call is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

BLOCK_BYTES = 64 * 2**20  # float32 bytes of one block: 64 MiB whatever the cohort size


@dataclass(frozen=True)
class VariantTable:
    """One row per variant, in file order. Alleles in upper case."""

    chrom: np.ndarray  # str, without a "chr" prefix ("1", "X")
    pos: np.ndarray  # int64, 1-based
    id: np.ndarray  # str, the file's ID column ("." when none)
    ref: np.ndarray  # str
    alt: np.ndarray  # str: the allele the dosage counts

    def __len__(self) -> int:
        return len(self.pos)

    def keys(self, index: np.ndarray | None = None) -> list[str]:
        """ "chrom:pos:ref:alt" per variant: the key the vocabulary stores (as the VCF path does)."""
        rows = np.arange(len(self)) if index is None else index
        return [f"{self.chrom[i]}:{self.pos[i]}:{self.ref[i]}:{self.alt[i]}" for i in rows]


class GenotypeReader(Protocol):
    """A genotype file set opened for reading (readers/plink.py, readers/bgen.py, readers/vcf.py)."""

    path: Path  # the file named in errors
    samples: list[str]
    variants: VariantTable

    def blocks(self, size: int, select: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(variant indices, float32 dosages [len(indices), samples]) in file order.

        ``select``: increasing variant indices to read (None: every variant).
        """
        ...

    def close(self) -> None: ...


def block_size(n_samples: int, budget: int = BLOCK_BYTES) -> int:
    """Variants per block so that one float32 block stays within ``budget`` bytes."""
    return max(1, budget // (4 * max(n_samples, 1)))


def budget_blocks(reader: GenotypeReader, select: np.ndarray | None = None):
    """A reader's blocks at the memory budget, in one reused buffer where the reader has one
    (PgenReader.blocks_into): for a single pass that never keeps a block."""
    size = block_size(len(reader.samples))
    into = getattr(reader, "blocks_into", None)
    return into(size, select) if into is not None else reader.blocks(size, select)


def normalise_chrom(values) -> np.ndarray:
    """ "chr1" and "1" name the same chromosome; PGS Catalog files and PLINK write "1"."""
    text = np.asarray(values, dtype=str)
    return np.char.replace(np.char.upper(text), "CHR", "") if len(text) else text


def selected_blocks(select: np.ndarray | None, n: int, size: int) -> Iterator[np.ndarray]:
    """Split ``select`` (or 0..n-1) into runs of at most ``size`` increasing indices."""
    index = np.arange(n) if select is None else np.asarray(select, np.int64)
    for start in range(0, len(index), size):
        yield index[start : start + size]
