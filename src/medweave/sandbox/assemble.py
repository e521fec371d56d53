"""Join the shards' part files into the cohort's final files, byte for byte the same whatever the
shard size or number of workers.

Parquet files get row groups of a fixed size (not one per shard) and events files hold fixed
blocks of subjects; the VCF is formatted and bgzipped a block of variants at a time from the
shards' genotype parts, so no step holds the whole cohort in memory.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
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


def write_events(root: Path, parts: list[Path], subject_ids: np.ndarray, workers: int = 1) -> None:
    """data/<k>.parquet holds subjects [k * 50,000, (k + 1) * 50,000) in subject order.

    Each file is written from the parts that hold its subjects (``workers`` files at a time, in
    forked processes), so the bytes depend only on the rows, never on the order files finish in.
    """
    blocks = [_part_blocks(part, subject_ids) for part in parts]
    files = sorted({k for b in blocks for k in b})
    jobs = [(root, k, [p for p, b in zip(parts, blocks, strict=True) if k in b], subject_ids) for k in files]
    bar = tqdm(total=len(jobs), desc="writing events", unit="file", leave=False)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _write_events_file(job)
            bar.update()
    else:
        # fork, as the shards: the children need only pyarrow and numpy
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            for _ in pool.map(_write_events_file, jobs):
                bar.update()
    bar.close()
    for part in parts:
        part.unlink()


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A shard's part file: parquet, or Arrow IPC (``.arrow``, what the registry shards write)."""
    if path.suffix == ".arrow":
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        return table.select(columns) if columns else table
    return pq.read_table(path, columns=columns)


def _part_blocks(part: Path, subject_ids: np.ndarray) -> set[int]:
    ids = read_part(part, ["subject_id"]).column("subject_id").to_numpy()
    if not len(ids):
        return set()
    first, last = np.searchsorted(subject_ids, [ids[0], ids[-1]]) // SUBJECTS_PER_EVENTS_FILE
    return set(range(int(first), int(last) + 1))


def _write_events_file(job) -> None:
    root, k, parts, subject_ids = job
    writer = FixedRowGroupWriter(root / c.EVENTS_DIR / f"{k}.parquet", c.EVENTS_SCHEMA)
    for part in parts:  # in subject order
        table = read_part(part)
        block = (
            np.searchsorted(subject_ids, table.column("subject_id").to_numpy()) // SUBJECTS_PER_EVENTS_FILE
        )
        writer.write(table.filter(pa.array(block == k)))
    writer.close()


def write_table_parts(path: Path, parts: list[Path], schema: pa.Schema) -> None:
    writer = FixedRowGroupWriter(path, schema)
    for part in parts:
        writer.write(pq.read_table(part))
        part.unlink()
    writer.close()


def part_codes(parts: list[Path]):
    """The shards' genotype parts (uint8 [V, samples in shard], subject order) as one code source:
    ``codes(v0, v1)`` -> uint8 [v1 - v0, samples], hap0 + 2 * hap1 (what the writers below read;
    ``dosage=True``: hap0 + hap1)."""
    arrays = [np.load(p, mmap_mode="r") for p in parts]

    def codes(v0: int, v1: int, dosage: bool = False) -> np.ndarray:
        block = np.concatenate([a[v0:v1] for a in arrays], axis=1)
        return (block & 1) + (block >> 1) if dosage else block

    return codes


def write_vcf(path: Path, panel, samples: list[int], codes) -> None:
    """A bgzipped, tabix-indexed VCF 4.2 with phased GT, one sample per sequenced subject.

    ``codes(v0, v1)``: uint8 [variants, samples] genotype codes (``part_codes``, or the registry
    sandbox's genome source), read a block of variants at a time.
    """
    import pysam

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
            block = codes(v0, v1) if samples else None
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


def chromosome_of_variant(n_variants: int, n_chromosomes: int) -> np.ndarray:
    """Chromosome number per panel variant: contiguous runs, as a genome centre splits a genome."""
    return 1 + np.arange(n_variants) * n_chromosomes // max(n_variants, 1)


def write_plink(
    folder: Path, panel, samples: list[int], codes, fmt: str, n_chromosomes: int, workers: int = 1
) -> None:
    """One PLINK 2 (.pgen/.pvar/.psam) or PLINK 1 (.bed/.bim/.fam) set per chromosome under ``folder``.

    Hard calls (``codes(v0, v1, dosage=True)``: hap0 + hap1 of the codes ``write_vcf`` reads) stream in
    blocks of variants, so a million-variant panel never sits in memory as one matrix. ``workers``
    processes write chromosomes side by side (forked: ``codes`` is shared, not pickled).
    """
    chrom = chromosome_of_variant(panel.n_variants, n_chromosomes)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [k for k in range(1, n_chromosomes + 1) if (chrom == k).any()]
    _PLINK_JOB.update(folder=folder, panel=panel, names=[str(s) for s in samples], codes=codes, fmt=fmt)
    _PLINK_JOB["chrom"] = chrom
    bar = tqdm(total=panel.n_variants, desc=f"writing {fmt}", unit="variant", leave=False)
    try:
        if workers <= 1 or len(jobs) == 1:
            for k in jobs:
                bar.update(_write_chromosome(k))
        else:
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
                for done in pool.map(_write_chromosome, jobs):
                    bar.update(done)
    finally:
        bar.close()
        _PLINK_JOB.clear()


_PLINK_JOB: dict = {}  # what write_plink's forked workers read (a closure cannot be pickled)


def _write_chromosome(k: int) -> int:
    from medweave.data.readers import plink
    from medweave.data.readers.genotypes import VariantTable

    job = _PLINK_JOB
    panel, codes = job["panel"], job["codes"]
    index = np.flatnonzero(job["chrom"] == k)
    table = VariantTable(
        chrom=np.full(len(index), str(k)),
        pos=panel.positions[index],
        id=np.array([f"sv{v}" for v in index]),
        ref=panel.ref[index],
        alt=panel.alt[index],
    )

    def blocks():
        for v0 in range(0, len(index), 4 * VARIANTS_PER_BLOCK):
            rows = index[v0 : v0 + 4 * VARIANTS_PER_BLOCK]
            yield codes(int(rows[0]), int(rows[-1]) + 1, dosage=True).view(np.int8)

    write = plink.write_pgen if job["fmt"] == "plink2" else plink.write_bed
    suffix = ".pgen" if job["fmt"] == "plink2" else ".bed"
    write(job["folder"] / f"chr{k}{suffix}", job["names"], table, blocks())
    return len(index)


def write_pgs_file(path: Path, panel, score: str, n_chromosomes: int, seed: int) -> None:
    """The panel's true per-allele effects for one score as a PGS Catalog scoring file (GRCh38).

    A tenth of the rows name REF as the effect allele (negated weight), another tenth are written on
    the other strand (not A/T or C/G sites, whose flip no one could tell from a swap), as real
    scoring files mix both: matching must undo them to recover the score.
    """
    rng = np.random.default_rng([seed, 303])
    chrom = chromosome_of_variant(panel.n_variants, n_chromosomes)
    effect, other = panel.alt.astype(str).copy(), panel.ref.astype(str).copy()
    weight = panel.effects[score].astype(float).copy()
    draw = rng.random(panel.n_variants)
    swap = draw < 0.1
    effect[swap], other[swap] = panel.ref[swap], panel.alt[swap]
    weight[swap] = -weight[swap]
    pair = np.char.add(panel.ref.astype(str), panel.alt.astype(str))
    palindromic = np.isin(pair, ["AT", "TA", "CG", "GC"])  # a flip of these reads as a swap: unknowable
    flip = (draw >= 0.1) & (draw < 0.2) & ~palindromic
    table = str.maketrans("ACGT", "TGCA")
    effect[flip] = [a.translate(table) for a in effect[flip]]
    other[flip] = [a.translate(table) for a in other[flip]]
    header = [
        "###PGS CATALOG SCORING FILE - see https://www.pgscatalog.org/downloads/ for more information",
        "#format_version=2.0",
        "##POLYGENIC SCORE (PGS) INFORMATION",
        f"#pgs_id=PGS_SANDBOX_{score.upper()}",
        f"#pgs_name=medweave-sandbox {score}",
        f"#trait_reported={score}",
        "#genome_build=GRCh38",
        f"#variants_number={panel.n_variants}",
        "rsID\tchr_name\tchr_position\teffect_allele\tother_allele\teffect_weight",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(header) + "\n")
        f.writelines(
            f"sv{v}\t{chrom[v]}\t{panel.positions[v]}\t{effect[v]}\t{other[v]}\t{weight[v]:.6g}\n"
            for v in range(panel.n_variants)
        )
