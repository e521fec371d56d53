"""The genomics modality in the prepared cache: variants, expression and external embeddings.

What reaches the model is one vector per subject, the concatenation of the configured sources in
a fixed order (``data.genomics.sources``; null = every source the cohort has, fixed at fit time):

    variants     standardised alt-allele dosages of the variants that pass QC on the train split
    expression   normalised expression per gene (cpm / log1p / zscore, in the configured order)
    embeddings   the external model's vector, z-scored (provenance recorded, checked at eval)

A subject has the modality when any source has them; a source a subject lacks (or a missing call)
is 0, the train mean after standardisation. Every statistic (variant QC, means, SDs, gene and
variant lists) is fitted on the train split and kept in the vocabulary, so evaluation maps a
cohort the same way. VCF samples reach subjects through genomics/sample_map.{tsv,parquet}
(sample, subject_id) when there is one; otherwise a sample name is the subject_id. The arrays live
in a store shared by every task fitted on the same train subjects (prepare.py, data/store.py).
"""

from medweave.data.genomics.batch import features, sources_of, width
from medweave.data.genomics.options import ARRAYS, SOURCES, GenomicsOptions
from medweave.data.genomics.prepare import prepare_genomics
from medweave.data.genomics.validate import check_genomics

__all__ = [
    "ARRAYS",
    "SOURCES",
    "GenomicsOptions",
    "check_genomics",
    "features",
    "prepare_genomics",
    "sources_of",
    "width",
]
