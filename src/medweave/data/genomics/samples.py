"""Genotype sample names -> cohort subjects, through genomics/sample_map.{tsv,parquet} when there is one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.genomics.files import sample_map_file
from medweave.data.genomics.options import GenomicsOptions
from medweave.errors import MedweaveError


class SampleNames:
    """Sample name -> subject_id, through the sample map when there is one.

    Faults (samples or subjects listed twice, subjects outside the cohort, map rows naming no
    sample of the VCFs) go through ``bad``; their rows are left out. Names and IDs are never
    printed: rows and sample columns are named by number.
    """

    def __init__(self, root: Path, opts: GenomicsOptions, cohort: set[int] | None, bad: BadInput):
        self.path = sample_map_file(root, opts)
        self.cohort = cohort
        self.bad = bad
        self.map: dict[str, int] | None = None
        if self.path is None:
            return
        table = self._read(self.path)
        samples = [None if s is None else str(s) for s in table.column("sample").to_pylist()]
        subjects = np.asarray(table.column("subject_id").fill_null(-1).to_numpy(), np.int64)
        keep = np.array([s is not None for s in samples]) & (subjects >= 0)
        self._fault_rows(~keep, "sample/subject_id", "empty; expected a sample name and a subject_id")
        for values, what, other in (
            (np.array(samples, object).astype(str), "sample", "subject"),
            (subjects.astype(str), "subject_id", "sample"),
        ):
            _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
            self._fault_rows(
                keep & (counts[inverse] > 1),
                what,
                f"{what} listed twice (mapped to two {other}s); expected one row per {what}",
            )
            keep &= counts[inverse] == 1
        outside = keep & ~np.isin(subjects, list(cohort)) if cohort is not None else np.zeros_like(keep)
        self._fault_rows(outside, "subject_id", f"subject_id matches no subject in {c.SUBJECT_SPLITS}")
        keep &= ~outside
        self.map = {samples[i]: int(subjects[i]) for i in np.flatnonzero(keep)}
        self._rows = {samples[i]: int(i) for i in np.flatnonzero(keep)}

    def _read(self, path: Path) -> pa.Table:
        try:
            if path.suffix == ".parquet":
                table = pq.read_table(path)
            else:
                from pyarrow import csv

                table = csv.read_csv(
                    path,
                    parse_options=csv.ParseOptions(delimiter="\t"),
                    convert_options=csv.ConvertOptions(column_types={"sample": pa.string()}),
                )
        except (pa.ArrowException, OSError) as err:
            raise MedweaveError(
                f"{path}: not readable ({err}); expected columns sample, subject_id"
            ) from None
        c.require_columns(table, ("sample", "subject_id"), path)
        if not pa.types.is_integer(table.schema.field("subject_id").type):
            raise MedweaveError(
                f"{path}: column subject_id has type {table.schema.field('subject_id').type}; "
                "expected integers"
            )
        return table

    def _fault_rows(self, mask: np.ndarray, field: str, expected: str) -> None:
        rows = np.flatnonzero(mask)
        if len(rows):
            self.bad.fault(self.path, f"row {rows[0]}, field {field}", expected, count=len(rows))

    def check_samples_exist(self, vcf_samples: set[str]) -> None:
        """A map row naming a sample that no VCF holds is a fault (a typo, or the wrong VCF)."""
        if self.map is None:
            return
        unknown = sorted(self._rows[s] for s in self.map if s not in vcf_samples)
        if unknown:
            self.bad.fault(
                self.path,
                f"row {unknown[0]}, field sample",
                "names a sample that no VCF/BCF under genomics/ holds",
                count=len(unknown),
            )
            for s in [s for s in self.map if s not in vcf_samples]:
                del self.map[s]

    def subject(self, name: str) -> int | None:
        """subject_id of a sample (or subject_id text); None: not a cohort subject."""
        if self.map is not None and name in self.map:
            return self.map[name]
        text = name.strip()
        if text.isdigit() and (self.cohort is None or int(text) in self.cohort):
            return int(text)
        return None

    def vcf_subjects(self, path: Path | str, samples: list[str]) -> np.ndarray:
        """subject_id per VCF sample column; -1 for samples left out (faults, or not in the map)."""
        ids = np.array([-1 if (s := self.subject(n)) is None else s for n in samples], np.int64)
        if self.map is not None:  # samples outside the map belong to other studies
            return ids
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            self.bad.fault(
                path,
                f"sample {unknown[0]}",
                f"sample name is not a subject_id of {c.SUBJECT_SPLITS} "
                "(and there is no genomics/sample_map.tsv)",
                count=len(unknown),
            )
        return ids


def cohort_ids(root: Path) -> set[int]:
    return set(
        pq.read_table(root / c.SUBJECT_SPLITS, columns=["subject_id"]).column("subject_id").to_pylist()
    )


def rows_of(subject_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row in the sorted labelled subjects, whether it is one) for each id."""
    if not len(subject_ids):
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    row = np.clip(np.searchsorted(subject_ids, ids), 0, max(len(subject_ids) - 1, 0))
    return row, (ids >= 0) & (subject_ids[row] == ids)
