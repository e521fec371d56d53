"""A cohort k times larger from one that exists: each copy of every subject gets a new subject_id.

    python benchmarks/replicate_cohort.py /data/c100k /data/c1m --copies 10

For benchmarks at a size the generator would take hours to write on a small machine. Copy r of
subject s is subject s + r * (largest id + 1): the same events, labels and split, so the events-
per-person distribution is the source's exactly and every copy is a distinct person for the
preparation (shards, counts, vocabulary). Copy r of data/<k>.parquet is data/<r>_<k>.parquet, so
shards stay sharded by subject. Streams row groups: memory is one row group.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def shifted(table: pa.Table, offset: int) -> pa.Table:
    i = table.column_names.index("subject_id")
    return table.set_column(
        i, "subject_id", pc.add(table.column("subject_id"), pa.scalar(offset, pa.int64()))
    )


def replicate_file(src: Path, dst: Path, offsets: list[int]) -> None:
    """One parquet file, its rows once per offset (one output file)."""
    source = pq.ParquetFile(src)
    with pq.ParquetWriter(dst, source.schema_arrow) as writer:
        for offset in offsets:
            for g in range(source.num_row_groups):
                writer.write_table(shifted(source.read_row_group(g), offset).cast(source.schema_arrow))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()
    src, out = args.source, args.out
    splits = pq.read_table(src / "metadata/subject_splits.parquet")
    step = int(pc.max(splits.column("subject_id")).as_py()) + 1
    offsets = [r * step for r in range(args.copies)]
    (out / "data").mkdir(parents=True)
    (out / "metadata").mkdir()
    for shard in sorted((src / "data").glob("*.parquet")):
        for r, offset in enumerate(offsets):
            replicate_file(shard, out / "data" / f"{r}_{shard.name}", [offset])
    replicate_file(src / "metadata/subject_splits.parquet", out / "metadata/subject_splits.parquet", offsets)
    for name in ("codes.parquet", "dataset.json"):
        if (src / "metadata" / name).exists():
            shutil.copy2(src / "metadata" / name, out / "metadata" / name)
    (out / "labels").mkdir()
    for labels in sorted((src / "labels").glob("*.parquet")):
        replicate_file(labels, out / "labels" / labels.name, offsets)
    print(json.dumps({"out": str(out), "copies": args.copies, "id_step": step}))


if __name__ == "__main__":
    main()
