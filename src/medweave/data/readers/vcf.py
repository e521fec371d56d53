"""Multi-sample VCF/BCF through pysam (htslib): alt-allele dosages per sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medweave.errors import MedweaveError


def read_dosages(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(sample names, variant ids, int8 dosages [samples, variants]; -1 where the call is missing).

    Multi-allelic sites count every non-reference allele.
    """
    import pysam

    try:
        vcf = pysam.VariantFile(str(path))
    except (OSError, ValueError) as err:
        raise MedweaveError(f"{path}: not a readable VCF/BCF ({err})") from None
    samples = list(vcf.header.samples)
    ids, columns = [], []
    with vcf:
        for record in vcf:
            ids.append(record.id or f"{record.chrom}:{record.pos}:{record.ref}:{','.join(record.alts or [])}")
            dose = np.empty(len(samples), np.int8)
            for j, call in enumerate(record.samples.values()):
                gt = call.get("GT") or ()
                dose[j] = -1 if (not gt or None in gt) else sum(a > 0 for a in gt)
            columns.append(dose)
    if not columns:
        raise MedweaveError(f"{path}: VCF has no variant records")
    return samples, ids, np.stack(columns, axis=1)
