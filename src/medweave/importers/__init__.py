"""Turn outside data into a medweave cohort (MEDS events + metadata), as ``medweave-import`` does.

    fhir/             FHIR R4 JSON (Bundles, single resources, NDJSON, Bulk Data exports) -> events
    table.py          registry extracts (CSV or parquet, long or wide) + a mapping YAML -> events
    cohort_writer.py  what both share: string IDs -> int64 subject_ids, sharded parquet parts,
                      codes/splits/dataset metadata, the temp-sibling-then-rename finish, and the
                      summary of what was read, kept and left out (log_summary)

Labels are not made here: a MEDS labeller (ACES, or a few lines over the events) writes them.
"""

from medweave.importers.cohort_writer import ImportOptions

__all__ = ["ImportOptions"]
