"""Sandbox generation at national scale: wall time and peak memory per cohort size.

    python benchmarks/sandbox_scale.py                          # 2k, 20k, 60k subjects, 10k variants
                                                                # each, every subject sequenced
    python benchmarks/sandbox_scale.py --subjects 200 --variants 100   # seconds, a check

Runs ``medweave-sandbox`` as a child process per size and samples the memory of its whole process
tree (the parent and its workers) every 0.2 s (_measure.py). Memory is the sum of proportional set
sizes (PSS): pages that forked workers share with the parent count once, not once per process, so the figure
is what the machine actually had to hold. Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
from _measure import measure


def run(n: int, variants: int, workers: int, missing_genomics: float, out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "medweave.cli.sandbox",
        f"out={out}",
        f"n_subjects={n}",
        f"n_variants={variants}",
        f"workers={workers}",
        f"missing.genomics={missing_genomics}",
        "overwrite=true",
    ]
    env = os.environ | {"TQDM_DISABLE": "1"}
    run = measure(command, env=env, interval=0.2, pss=True, log=out.parent / out.name)
    if run.returncode:
        raise SystemExit(f"medweave-sandbox failed for n={n}:\n{(run.stdout + run.stderr)[-3000:]}")
    meta = json.loads((out / "metadata/dataset.json").read_text())["medweave"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "subjects": n,
        "variants": variants,
        "workers": workers,
        "genomes": int(
            pq.read_table(out / "ground_truth/risk.parquet", columns=["has_genomics"])[0].to_numpy().sum()
        ),
        "wall_s": round(run.wall_s, 1),
        "cpu_s": round(run.cpu_s, 1),
        "peak_memory_gb": round(run.peak_pss / 1e9, 2),
        "load_average": [round(x, 2) for x in run.load],
        "cohort_gb": round(size / 1e9, 2),
        "oracle_auroc_held_out": meta["oracle"]["cvd_onset_1y"]["auroc"]["held_out"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[2000, 20000, 60000])
    parser.add_argument("--variants", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    parser.add_argument(
        "--missing-genomics", type=float, default=0.0, help="share without a genome (0: a genome programme)"
    )
    parser.add_argument("--keep", type=Path, help="leave the cohorts here instead of deleting them")
    args = parser.parse_args()
    machine = f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores"
    for n in args.subjects:
        work = Path(tempfile.mkdtemp(prefix="sandbox-scale-"))
        out = (args.keep or work) / f"n{n}"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            result = run(n, args.variants, args.workers, args.missing_genomics, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result |= {"machine": machine, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
