"""Join the shards' part files into the cohort's final files, byte for byte the same whatever the
shard size or number of workers.

Parquet files get row groups of a fixed size (not one per shard) and events files hold fixed
blocks of subjects; the VCF is formatted and bgzipped a block of variants at a time from the
shards' genotype parts, so no step holds the whole cohort in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from medweave import __version__
from medweave.data import contract as c

ROW_GROUP_ROWS = 100_000
SUBJECTS_PER_EVENTS_FILE = 50_000  # as MEDS ETLs shard data/ by subject
VARIANTS_PER_BLOCK = 256
# "hap0|hap1\t" for each code hap0 + 2 * hap1
GT_BYTES = np.frombuffer(b"0|0\t1|0\t0|1\t1|1\t", np.uint8).reshape(4, 4)


class FixedRowGroupWriter:
    """A parquet writer whose row groups hold exactly ``rows`` rows (the last one fewer), however
    the input arrives, so that the file's bytes depend on its content only."""

    def __init__(self, path: Path, schema: pa.Schema, rows: int | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer, self.schema, self.rows = pq.ParquetWriter(path, schema), schema, rows or ROW_GROUP_ROWS
        self.pending: list[pa.Table] = []
        self.n_pending = 0

    def write(self, table: pa.Table) -> None:
        self.pending.append(table.cast(self.schema))
        self.n_pending += table.num_rows
        if self.n_pending >= self.rows:
            self._flush(whole_groups_only=True)

    def _flush(self, whole_groups_only: bool) -> None:
        table = pa.concat_tables(self.pending).combine_chunks()  # one chunk: pages do not follow shards
        cut = (table.num_rows // self.rows) * self.rows if whole_groups_only else table.num_rows
        if cut:
            self.writer.write_table(table.slice(0, cut), row_group_size=self.rows)
        rest = table.slice(cut)
        self.pending, self.n_pending = [rest], rest.num_rows

    def close(self) -> None:
        if self.n_pending or not self.pending:
            self._flush(whole_groups_only=False)
        self.writer.close()


def write_events(root: Path, parts: list[Path], subject_ids: np.ndarray) -> None:
    """data/<k>.parquet holds subjects [k * 50,000, (k + 1) * 50,000) in subject order."""
    writer, current = None, None
    for part in parts:  # in subject order, so blocks only ever increase
        table = pq.read_table(part)
        block = (
            np.searchsorted(subject_ids, table.column("subject_id").to_numpy()) // SUBJECTS_PER_EVENTS_FILE
        )
        for k in np.unique(block):
            if k != current:
                if writer is not None:
                    writer.close()
                writer, current = (
                    FixedRowGroupWriter(root / c.EVENTS_DIR / f"{k}.parquet", c.EVENTS_SCHEMA),
                    k,
                )
            writer.write(table.filter(pa.array(block == k)))
        part.unlink()
    if writer is not None:
        writer.close()


def write_table_parts(path: Path, parts: list[Path], schema: pa.Schema) -> None:
    writer = FixedRowGroupWriter(path, schema)
    for part in parts:
        writer.write(pq.read_table(part))
        part.unlink()
    writer.close()


def write_vcf(path: Path, panel, samples: list[int], parts: list[Path]) -> None:
    """A bgzipped, tabix-indexed VCF 4.2 with phased GT, one sample per sequenced subject.

    ``parts`` are the shards' genotype codes, uint8 [V, samples in shard], in subject order.
    """
    import pysam

    codes = [np.load(p, mmap_mode="r") for p in parts]
    header = [
        "##fileformat=VCFv4.2",
        f"##source=medweave-sandbox {__version__}",
        f"##contig=<ID={panel.chrom},length={int(panel.positions[-1]) + 1000}>",
        '##INFO=<ID=AF,Number=A,Type=Float,Description="Population alt allele frequency">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(
            ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"] + ["FORMAT"] * bool(samples)
        )
        + "".join(f"\t{s}" for s in samples),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    out = pysam.BGZFile(str(path), "wb")
    try:
        out.write(("\n".join(header) + "\n").encode())
        bar = tqdm(total=panel.n_variants, desc="writing VCF", unit="variant", leave=False)
        for v0 in range(0, panel.n_variants, VARIANTS_PER_BLOCK):
            v1 = min(v0 + VARIANTS_PER_BLOCK, panel.n_variants)
            lines = []
            block = np.concatenate([p[v0:v1] for p in codes], axis=1) if samples else None
            body = GT_BYTES[block] if samples else None  # [variants, samples, 4]
            for j, v in enumerate(range(v0, v1)):
                fixed = (
                    f"{panel.chrom}\t{panel.positions[v]}\tsv{v}\t{panel.ref[v]}\t{panel.alt[v]}"
                    f"\t.\tPASS\tAF={panel.maf[v]:.4f}"
                )
                if samples:
                    row = body[j]
                    row[-1, 3] = ord("\n")
                    lines += [fixed.encode(), b"\tGT\t", row.tobytes()]
                else:
                    lines += [fixed.encode(), b"\n"]
            out.write(b"".join(lines))
            bar.update(v1 - v0)
        bar.close()
    finally:
        out.close()
    pysam.tabix_index(str(path), preset="vcf", force=True)
    for part in parts:
        part.unlink()
