"""Genomes at scale: N subjects x M variants (PLINK 2 per chromosome) -> 20 PCs + one PGS.

    python benchmarks/genomics_scale.py --subjects 10000 --variants 100000
    python benchmarks/genomics_scale.py --subjects 60000 --variants 20000
    python benchmarks/genomics_scale.py --subjects 500 --variants 2000     # seconds, a check
    python benchmarks/genomics_scale.py --subjects 10000 --variants 20000 --compare  # + scikit-learn
    python benchmarks/genomics_scale.py --cohort /path/to/sandbox  # a cohort's genomes, as they are

The issue 14 target is 60,000 x 1,000,000 in <= 30 min and <= 8 GB. Two steps per size:
1. write the genotypes (four populations with their own allele frequencies, so the PCs have
   something to find) as one PLINK 2 set per chromosome with pgenlib, in blocks, and a genome-wide
   PGS Catalog scoring file over every variant (a tenth with REF as the effect allele);
2. in a child process, what preparation runs for data.genomics.sources [pcs, pgs]: open the sets
   (genomics/genotypes.py), the randomized PCA on the 70 % train subjects with projection of all
   (genomics/pca.py), and the PGS matched and scored (genomics/pgs.py).
Step 2 is timed (wall and CPU seconds: the machine is shared, so wall time includes others' load),
and the memory of its whole process tree (the child and any children; RSS
summed) is sampled every 0.2 s. Prints one JSON line per size and appends it under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

GB = 2**30


def write_genomes(folder: Path, n: int, m: int, chromosomes: int, seed: int) -> None:
    from medweave.data.readers import plink
    from medweave.data.readers.genotypes import VariantTable

    rng = np.random.default_rng(seed)
    pop = rng.integers(0, 4, n)
    samples = [str(10**9 + i) for i in range(n)]
    chrom = 1 + np.arange(m) * chromosomes // m
    bases = np.array(list("ACGT"))
    ref = rng.choice(bases, m)
    # ALT never the complement of REF: real arrays have few A/T, C/G sites (pgs_ambiguous drops them)
    options = np.array([["C", "G"], ["A", "T"], ["A", "T"], ["C", "G"]])  # for A, C, G, T
    alt = options[np.searchsorted(bases, ref), rng.integers(0, 2, m)]
    pos = np.cumsum(rng.integers(200, 5000, m)) + 10_000
    weight = rng.normal(0, 0.02, m)
    (folder / "genomics/variants").mkdir(parents=True)
    for k in range(1, chromosomes + 1):
        index = np.flatnonzero(chrom == k)
        table = VariantTable(
            np.full(len(index), str(k)),
            pos[index],
            np.array([f"v{i}" for i in index]),
            ref[index],
            alt[index],
        )

        def blocks(index=index):
            for v0 in range(0, len(index), 2048):
                b = len(index[v0 : v0 + 2048])
                base = rng.uniform(0.02, 0.5, b)
                af = np.clip(base[:, None] + rng.normal(0, 0.05, (b, 4)), 0.01, 0.99)[:, pop]
                yield (
                    (rng.random((b, n), np.float32) < af).astype(np.int8)
                    + (rng.random((b, n), np.float32) < af).astype(np.int8)
                )

        plink.write_pgen(folder / f"genomics/variants/chr{k}.pgen", samples, table, blocks())
    swap = rng.random(m) < 0.1
    effect, other = np.where(swap, ref, alt), np.where(swap, alt, ref)
    w = np.where(swap, -weight, weight)
    with open(folder / "score.txt", "w") as f:
        f.write("#pgs_id=PGS_BENCH\n#pgs_name=bench\n#trait_reported=bench\n#genome_build=GRCh38\n")
        f.write("rsID\tchr_name\tchr_position\teffect_allele\tother_allele\teffect_weight\n")
        for s in range(0, m, 100_000):
            sl = slice(s, s + 100_000)
            f.writelines(
                f"v{i}\t{c}\t{p}\t{e}\t{o}\t{x:.6g}\n"
                for i, c, p, e, o, x in zip(
                    range(s, s + len(chrom[sl])),
                    chrom[sl],
                    pos[sl],
                    effect[sl],
                    other[sl],
                    w[sl],
                    strict=True,
                )
            )


def embed(folder: Path, pcs: int, score_file: Path | None = None) -> dict:
    """The child: what prepare_genomics runs for pcs + pgs, timed step by step."""
    from medweave.data.bad_input import BadInput
    from medweave.data.genomics import pca, pgs
    from medweave.data.genomics.files import genotype_files
    from medweave.data.genomics.genotypes import open_genotypes
    from medweave.data.genomics.options import GenomicsOptions
    from medweave.data.genomics.samples import SampleNames

    # keep A/T, C/G sites: both generators write genotypes and scores on the same strand
    opts = GenomicsOptions.from_dict({"pcs": pcs, "pgs_ambiguous": "keep"})
    t0 = time.perf_counter()
    files = genotype_files(folder, opts)
    names = SampleNames(folder, opts, None, BadInput())
    first = files[0].with_suffix(".psam").read_text().split()[1:]
    subject_ids = np.array(sorted(int(s) for s in first), np.int64)
    g = open_genotypes(files, subject_ids, names)
    train = np.random.default_rng(1).random(len(subject_ids)) < 0.7
    t1, c1 = time.perf_counter(), time.process_time()
    vocab: dict = {}
    components = pca.fit_project(g, train, opts, vocab)
    t2, c2 = time.perf_counter(), time.process_time()
    score = pgs.fit_scores(g, [score_file or folder / "score.txt"], train, opts, "GRCh38", vocab)
    t3, c3 = time.perf_counter(), time.process_time()
    g.close()
    return {
        "open_s": round(t1 - t0, 2),
        "pca_s": round(t2 - t1, 2),
        "pgs_s": round(t3 - t2, 2),
        # CPU seconds (all threads): on this shared machine wall time also counts others' load
        "pca_cpu_s": round(c2 - c1, 2),
        "pgs_cpu_s": round(c3 - c2, 2),
        "threads": len(os.sched_getaffinity(0)),
        "pca_variants": len(vocab["pca"]["variants"]),
        "pgs_matched": vocab["pgs"][0]["counts"]["matched"],
        "pc_shape": list(components.shape),
        "pgs_finite": bool(np.isfinite(score).all()),
    }


def embed_sklearn(folder: Path, pcs: int) -> dict:
    """The child for --compare: the same PCA in memory, scikit-learn's randomized_svd on the whole
    standardised train matrix (what one writes without an out-of-core path)."""
    from sklearn.utils.extmath import randomized_svd

    from medweave.data.genomics.files import genotype_files
    from medweave.data.genomics.genotypes import open_reader
    from medweave.data.genomics.options import GenomicsOptions

    t0, c0 = time.perf_counter(), time.process_time()
    blocks = []
    for path in genotype_files(folder, GenomicsOptions()):
        r = open_reader(path)
        blocks += [b for _i, b in r.blocks(4096)]
        r.close()
    train = np.random.default_rng(1).random(blocks[0].shape[1]) < 0.7
    x = np.concatenate(blocks).T  # [subjects, variants]
    del blocks
    mean, sd = x[train].mean(0), x[train].std(0)
    keep = (sd > 1e-6) & (np.minimum(mean / 2, 1 - mean / 2) >= 0.01)
    x = (x[:, keep] - mean[keep]) / sd[keep]
    u, s, vt = randomized_svd(x[train], pcs, n_oversamples=10, n_iter=2, random_state=0)
    projected = x @ vt.T
    return {
        "sklearn_s": round(time.perf_counter() - t0, 2),
        "sklearn_cpu_s": round(time.process_time() - c0, 2),
        "pc_shape": list(projected.shape),
    }


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def watch(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd``; (wall seconds, peak RSS of its process tree). ``LAST`` gets the child's CPU
    seconds (user + sys, from the kernel) and the load average over the run."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = subprocess.Popen(cmd)
    proc = psutil.Process(child.pid)
    peak, loads = 0, []
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        if not loads or time.perf_counter() - start > 10 * len(loads):
            loads.append(os.getloadavg()[0])
        time.sleep(0.2)
    if child.returncode != 0:
        raise SystemExit(f"child failed with {child.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST["cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    LAST["load_avg_1min"] = [round(min(loads), 1), round(float(np.mean(loads)), 1), round(max(loads), 1)]
    return time.perf_counter() - start, peak


LAST: dict = {}  # the last watched child's CPU seconds and load average (min, mean, max)


def run_cohort(folder: Path, pcs: int) -> dict:
    """An existing cohort (e.g. medweave-sandbox registry_history=true genome_subjects=...): its
    PLINK sets and its cvd PGS Catalog file, nothing written."""
    size = sum(p.stat().st_size for p in (folder / "genomics/variants").iterdir())
    pvar = sorted((folder / "genomics/variants").glob("*.pvar"))
    m = sum(sum(1 for _ in open(p)) - 1 for p in pvar)
    n = sum(1 for _ in open(pvar[0].with_suffix(".psam"))) - 1
    out = folder.parent / f"{folder.name}-result.json"
    score = folder / "genomics/pgs/PGS_sandbox_cvd.txt"
    cmd = [sys.executable, __file__, "--child", str(folder), "--pcs", str(pcs), "--result", str(out)]
    wall, peak = watch([*cmd, "--score", str(score)])
    row = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "cohort": str(folder),
        "subjects": n,
        "variants": m,
        "chromosomes": len(pvar),
        "pgen_mb": round(size / 2**20, 1),
        "embed_wall_s": round(wall, 1),
        "embed_cpu_s": LAST["cpu_s"],
        "load_avg_1min": LAST["load_avg_1min"],
        "peak_rss_gb": round(peak / GB, 2),
        **json.loads(out.read_text()),
    }
    out.unlink()
    return row


def run_size(n: int, m: int, chromosomes: int, pcs: int, work: Path, compare: bool) -> dict:
    folder = work / f"g{n}x{m}"
    t = time.perf_counter()
    write_genomes(folder, n, m, chromosomes, seed=0)
    written = time.perf_counter() - t
    size = sum(p.stat().st_size for p in (folder / "genomics/variants").iterdir())
    out = folder / "result.json"
    wall, peak = watch(
        [sys.executable, __file__, "--child", str(folder), "--pcs", str(pcs), "--result", str(out)]
    )
    extra = {}
    if compare:
        other = folder / "sklearn.json"
        cmd = [
            sys.executable,
            __file__,
            "--child-sklearn",
            str(folder),
            "--pcs",
            str(pcs),
            "--result",
            str(other),
        ]
        s_wall, s_peak = watch(cmd)
        extra = {"sklearn_wall_s": round(s_wall, 1), "sklearn_peak_rss_gb": round(s_peak / GB, 2)}
        extra |= {k: v for k, v in json.loads(other.read_text()).items() if k != "pc_shape"}
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "subjects": n,
        "variants": m,
        "chromosomes": chromosomes,
        "pgen_mb": round(size / 2**20, 1),
        "write_s": round(written, 1),
        "embed_wall_s": round(wall, 1),
        "embed_cpu_s": LAST["cpu_s"],
        "load_avg_1min": LAST["load_avg_1min"],
        "peak_rss_gb": round(peak / GB, 2),
        **json.loads(out.read_text()),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[10_000])
    parser.add_argument("--variants", type=int, nargs="+", default=[100_000])
    parser.add_argument("--chromosomes", type=int, default=22)
    parser.add_argument("--pcs", type=int, default=20)
    parser.add_argument("--compare", action="store_true", help="also scikit-learn's in-memory PCA")
    parser.add_argument("--cohort", type=Path, help="an existing cohort's genomes instead of writing them")
    parser.add_argument("--child", type=Path)
    parser.add_argument("--score", type=Path)
    parser.add_argument("--child-sklearn", type=Path)
    parser.add_argument("--result", type=Path)
    args = parser.parse_args()
    if args.child:
        args.result.write_text(json.dumps(embed(args.child, args.pcs, args.score)))
        return
    if args.child_sklearn:
        args.result.write_text(json.dumps(embed_sklearn(args.child_sklearn, args.pcs)))
        return
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    log = results / f"{datetime.now(timezone.utc):%Y-%m-%dT%H-%M-%S}-genomics_scale.jsonl"
    if args.cohort:
        row = run_cohort(args.cohort.resolve(), args.pcs)
        print(json.dumps(row), flush=True)
        log.write_text(json.dumps(row) + "\n")
        return
    for n, m in zip(args.subjects, args.variants, strict=True):
        work = Path(tempfile.mkdtemp(prefix="medweave-genomics-bench-"))
        try:
            row = run_size(n, m, min(args.chromosomes, m), args.pcs, work, args.compare)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(row), flush=True)
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
