"""medweave-validate's genomics checks: every fault reported at once, nothing prepared."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from medweave.data import contract as c
from medweave.data.bad_input import BadInput
from medweave.data.genomics.files import GENOTYPE_SUFFIXES, genotype_files, variant_files
from medweave.data.genomics.genotypes import open_reader
from medweave.data.genomics.options import GenomicsOptions
from medweave.data.genomics.samples import SampleNames
from medweave.data.readers import embeddings as emb_reader
from medweave.data.readers import expression as expr_reader
from medweave.data.readers import vcf
from medweave.errors import MedweaveError


class _Collect(BadInput):
    """A lenient BadInput that records each fault as a validation problem instead of logging it."""

    def __init__(self, add: Callable[[Path | str, str, str], None]):
        super().__init__(lenient=True)
        self.add = add

    def fault(self, file, where, expected, count=1) -> None:
        more = f" ({count} rows in all)" if count > 1 else ""
        self.add(file, where, expected + more)


def check_genomics(root: Path, add, counts: dict, split_ids) -> None:
    """Report every genomics fault through ``add(path, where, message)`` (validate.py)."""
    root = Path(root)
    bad = _Collect(add)
    cohort = set(np.asarray(split_ids).tolist()) if split_ids is not None else None  # None: not checked

    def guard(path, step):
        try:
            return step()
        except MedweaveError as err:
            text = str(err)
            add(path, "file", text.split(": ", 1)[1] if text.startswith(f"{path}: ") else text)
            return None

    try:
        opts = GenomicsOptions()
        names = SampleNames(root, opts, cohort, bad)
    except MedweaveError as err:
        add(root / "genomics", "sample map", str(err))
        return
    samples: dict[str, None] = {}  # every file's samples, in first-seen order
    sets = guard(root / c.VARIANTS_DIR, lambda: genotype_files(root, opts)) or []
    for path in [p for p in sets if p.name.endswith(GENOTYPE_SUFFIXES)]:  # PLINK 2, PLINK 1, BGEN
        reader = guard(path, lambda p=path: open_reader(p))
        if reader is None:
            continue
        found = list(reader.samples)
        counts["genotyped_variants"] = counts.get("genotyped_variants", 0) + len(reader.variants)
        reader.close()
        if samples and set(found) != set(samples):
            add(
                path,
                "samples",
                "sample list differs from the other chromosomes' files; expected the same samples",
            )
        names.vcf_subjects(path, found)
        samples.update(dict.fromkeys(found))
    for path in variant_files(root):
        found = guard(path, lambda p=path: vcf.read_samples(p))
        if found is None:
            continue
        # Plain gzip, no index and header slips are read anyway (readers/vcf.py): counted, not faults.
        for note in guard(path, lambda p=path: vcf.read_notes(p)) or []:
            key = "vcf_read_by_streaming" if "streaming" in note else "vcf_header_slips"
            counts[key] = counts.get(key, 0) + 1
        names.vcf_subjects(path, found)
        samples.update(dict.fromkeys(found))
    if samples:
        counts["genomes"] = len(samples)
        names.check_samples_exist(set(samples))
    if (root / c.EXPRESSION).is_file():
        path = root / c.EXPRESSION
        expr = guard(path, lambda: expr_reader.read_expression(path, names.subject, "auto", bad))
        if expr is not None:
            counts["expression_profiles"] = len(expr.subjects)
    if (root / c.EMBEDDINGS).is_file():
        path = root / c.EMBEDDINGS
        found = guard(path, lambda: emb_reader.read_embeddings(path, bad))
        if found is not None:
            counts["genomic_embeddings"] = len(found.subjects)
            outside = np.flatnonzero(~np.isin(found.subjects, list(cohort or ())))
            if len(outside) and cohort is not None:
                add(path, "field subject_id", f"{len(outside)} embedding(s) match no subject in the splits")
