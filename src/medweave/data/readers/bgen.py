"""BGEN (UK Biobank's imputed genotypes, v1.1-1.3) through cbgen, the C library's thin wrapper.

cbgen rather than bgen-reader: bgen-reader is cbgen plus dask/xarray and pins pandas < 3 and
dask < 2025, which the rest of medweave's stack has moved past; what medweave needs (variant
metadata, probabilities per variant) cbgen gives directly. cbgen finds variants through a
metafile, which is written into a temporary folder (never beside the cohort's files, whose bytes
the cache key hashes) and removed on close.

Dosage = expected count of the second allele of each variant (BGEN's "B" allele; the first one is
REF): P(AB) + 2 P(BB) unphased, P(hap1 = B) + P(hap2 = B) phased. Samples come from the file's
own sample block, else from the Oxford .sample file beside it (column ID_1).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medweave.data.readers.genotypes import VariantTable, normalise_chrom, selected_blocks
from medweave.errors import MedweaveError


def read_oxford_samples(path: Path) -> list[str]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) < 2 or not rows[0] or rows[0][0] != "ID_1":
        raise MedweaveError(
            f"{path}: expected an Oxford .sample file (header 'ID_1 ID_2 missing ...', then a type line)"
        )
    return [row[0] for row in rows[2:]]


class BgenReader:
    def __init__(self, path: Path):
        import cbgen

        self.path = Path(path)
        self._tmp = Path(tempfile.mkdtemp(prefix="medweave-bgen-"))
        try:
            self._bgen = cbgen.bgen_file(self.path)
        except RuntimeError as err:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise MedweaveError(f"{self.path}: not a readable BGEN file ({err})") from None
        try:
            self.samples = self._samples()
            self.variants, self._offsets = self._variant_table()
        except BaseException:
            self.close()
            raise

    def _samples(self) -> list[str]:
        if self._bgen.contain_samples:
            return [s.decode() for s in self._bgen.read_samples()]
        beside = self.path.with_suffix(".sample")
        if not beside.is_file():
            raise MedweaveError(
                f"{self.path}: no sample identifiers inside the file and no {beside.name} beside it; "
                "expected one of them"
            )
        names = read_oxford_samples(beside)
        if len(names) != self._bgen.nsamples:
            raise MedweaveError(
                f"{beside}: lists {len(names)} samples but {self.path.name} holds {self._bgen.nsamples}"
            )
        return names

    def _variant_table(self) -> tuple[VariantTable, np.ndarray]:
        import cbgen

        meta = self._tmp / "variants.metafile"
        try:
            self._bgen.create_metafile(meta, verbose=False)
            mf = cbgen.bgen_metafile(meta)
        except RuntimeError as err:
            raise MedweaveError(f"{self.path}: variant index not readable ({err})") from None
        parts = [mf.read_partition(i).variants for i in range(mf.npartitions)]
        mf.close()
        alleles = [a.decode().split(",") for p in parts for a in p.allele_ids]
        if any(len(a) != 2 for a in alleles):
            raise MedweaveError(f"{self.path}: multi-allelic variants; expected biallelic sites")
        ids = np.concatenate([p.rsid for p in parts]).astype(str) if parts else np.array([], str)
        table = VariantTable(
            chrom=normalise_chrom(np.concatenate([p.chromosome for p in parts]).astype(str)),
            pos=np.concatenate([p.position for p in parts]).astype(np.int64),
            id=ids,
            ref=np.char.upper(np.array([a[0] for a in alleles], str)),
            alt=np.char.upper(np.array([a[1] for a in alleles], str)),
        )
        return table, np.concatenate([p.offset for p in parts]).astype(np.uint64)

    def blocks(self, size: int, select: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index in selected_blocks(select, len(self.variants), size):
            out = np.empty((len(index), len(self.samples)), np.float32)
            for row, v in enumerate(index):
                try:
                    gt = self._bgen.read_genotype(int(self._offsets[v]), precision=32)
                except RuntimeError as err:
                    raise MedweaveError(f"{self.path}: variant {v} not readable ({err})") from None
                p = gt.probability
                if gt.phased:
                    dose = p[:, 1] + p[:, 3]
                else:
                    dose = p[:, 1] + 2 * p[:, 2]
                dose[gt.missing] = np.nan
                out[row] = dose
            yield index, out

    def close(self) -> None:
        if getattr(self, "_bgen", None) is not None:
            self._bgen.close()
            self._bgen = None
        shutil.rmtree(self._tmp, ignore_errors=True)
