"""A cohort's genotype file sets opened together, their samples mapped to the labelled subjects.

PCs and PGS read the genotypes in blocks of variants x all samples (readers/genotypes.py); this
module turns each block into subject order ([variants, subjects], nan where a subject has no
genome in that file set) so pca.py and pgs.py never deal with files, samples or sample maps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medweave.data.genomics.samples import SampleNames, rows_of
from medweave.data.readers.genotypes import GenotypeReader, block_size
from medweave.errors import MedweaveError

log = logging.getLogger(__name__)


def open_reader(path: Path) -> GenotypeReader:
    from medweave.data.readers import bgen, plink, vcf

    name = path.name
    if name.endswith(".pgen"):
        return plink.PgenReader(path)
    if name.endswith(".bed"):
        return plink.BedReader(path)
    if name.endswith(".bgen"):
        return bgen.BgenReader(path)
    return vcf.DosageReader(path)


@dataclass
class Genotypes:
    readers: list[GenotypeReader]
    rows: list[np.ndarray]  # per reader: the subject row of each sample, -1 = not one of subject_ids
    subject_ids: np.ndarray  # sorted: the subjects the rows stand for

    @property
    def n_subjects(self) -> int:
        return len(self.subject_ids)

    def present(self) -> np.ndarray:
        have = np.zeros(self.n_subjects, bool)
        for rows in self.rows:
            have[rows[rows >= 0]] = True
        return have

    def blocks(
        self, reader: int, select: np.ndarray | None = None, budget_subjects: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(variant indices, float32 [variants, n_subjects] dosages in subject order, nan = none)."""
        r, rows = self.readers[reader], self.rows[reader]
        known = rows >= 0
        size = block_size(max(len(r.samples), budget_subjects or self.n_subjects))
        same = len(rows) == self.n_subjects and bool((rows == np.arange(len(rows))).all())
        for index, dose in r.blocks(size, select):
            if same:  # samples already in subject order (a file written for this cohort): no copy
                yield index, dose
                continue
            out = np.full((len(index), self.n_subjects), np.nan, np.float32)
            out[:, rows[known]] = dose[:, known]
            yield index, out

    def locate(self, keys: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per reader: (its variant indices, their positions in ``keys``), for keys it holds."""
        where = {k: i for i, k in enumerate(keys)}
        found = []
        for r in self.readers:
            own = r.variants.keys()
            pairs = [(j, where[k]) for j, k in enumerate(own) if k in where]
            a = np.array(pairs, np.int64).reshape(-1, 2)
            found.append((a[:, 0], a[:, 1]))
        return found

    def close(self) -> None:
        for r in self.readers:
            r.close()


def open_genotypes(files: list[Path], subject_ids: np.ndarray | None, names: SampleNames) -> Genotypes:
    """Open every file set and map its samples to ``subject_ids`` (sorted; None: every cohort
    subject with a genome here); a per-chromosome set must agree on its samples."""
    readers: list[GenotypeReader] = []
    try:
        for path in files:
            readers.append(open_reader(path))
        first = readers[0]
        for r in readers[1:]:
            if r.samples != first.samples and set(r.samples) != set(first.samples):
                odd = next((i for i, s in enumerate(r.samples) if s not in set(first.samples)), 0)
                raise MedweaveError(
                    f"{r.path}: sample {odd} (in file order) is not in {first.path.name}'s sample list; "
                    "expected every file of a per-chromosome set to hold the same samples"
                )
        names.check_samples_exist({s for r in readers for s in r.samples})
        sample_subjects = [names.vcf_subjects(r.path, r.samples) for r in readers]
        if subject_ids is None:
            subject_ids = np.unique(np.concatenate([s[s >= 0] for s in sample_subjects]))
        rows = []
        for sample_subject in sample_subjects:
            row, known = rows_of(subject_ids, sample_subject)
            rows.append(np.where(known, row, -1))
        if not any((x >= 0).any() for x in rows):
            where = "genomics/sample_map (column sample)" if names.map is not None else "the subject_ids"
            raise MedweaveError(
                f"{first.path}: none of its {len(first.samples)} samples is a subject of this cohort; "
                f"expected its sample IDs (.psam/.fam IID, BGEN sample) to match {where}"
            )
        return Genotypes(readers, rows, np.asarray(subject_ids, np.int64))
    except BaseException:
        for r in readers:
            r.close()
        raise
