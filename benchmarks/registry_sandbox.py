"""The registry-scale sandbox: generation wall time, peak memory and events per person by cohort size.

    python benchmarks/registry_sandbox.py                            # 10k and 100k people
    python benchmarks/registry_sandbox.py --subjects 1000000 --keep /tmp/registry-sandbox
    python benchmarks/registry_sandbox.py --subjects 2000            # seconds, a check
    python benchmarks/registry_sandbox.py --comorbidity false        # conditions independent given m

Runs ``medweave-sandbox registry_history=true`` as a child process per size and samples the memory
of its process tree (the parent and its workers) every 0.2 s (_measure.py): the sum of resident
set sizes (RSS, which counts pages forked workers share with the parent once per process) and of
proportional set sizes (PSS, which counts them once). Then it counts events per person a file at a time (the
files hold 50,000 people each, so this never holds the cohort) and plots their distribution.
Prints one JSON line per size and appends it to benchmarks/results/.
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

import numpy as np
import polars as pl
from _measure import measure

from medweave.data import contract as c

RESULTS = Path(__file__).parent / "results"


def generate(n: int, events: float, workers: int, out: Path, comorbidity: str) -> tuple[list[str], dict]:
    command = [
        sys.executable,
        "-m",
        "medweave.cli.sandbox",
        f"out={out}",
        f"n_subjects={n}",
        "registry_history=true",
        f"events_per_person={events}",
        f"workers={workers}",
        f"comorbidity={comorbidity}",
        "overwrite=true",
    ]
    env = os.environ | {"TQDM_DISABLE": "1"}
    run = measure(command, env=env, interval=0.2, pss=True, log=out.parent / out.name)
    if run.returncode:
        raise SystemExit(f"medweave-sandbox failed for n={n}:\n{(run.stdout + run.stderr)[-3000:]}")
    return command, {
        "wall_s": round(run.wall_s, 1),
        "cpu_s": round(run.cpu_s, 1),
        "peak_rss_gb": round(run.peak_rss / 1e9, 2),
        "peak_pss_gb": round(run.peak_pss / 1e9, 2),
        "load_average": [round(x, 2) for x in run.load],
    }


def events_per_person(root: Path) -> np.ndarray:
    counts = []
    for path in sorted((root / "data").glob("*.parquet"), key=lambda p: int(p.stem)):
        counts.append(pl.read_parquet(path, columns=["subject_id"])["subject_id"].value_counts()["count"])
    return pl.concat(counts).to_numpy()


def plot(counts: np.ndarray, n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.logspace(0, np.log10(counts.max() + 1), 60)
    ax.hist(counts, bins=bins, color="#4c72b0")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for q, style in ((0.5, "-"), (0.99, "--")):
        ax.axvline(np.quantile(counts, q), color="k", linestyle=style, label=f"{q:.0%} quantile")
    ax.axvline(counts.mean(), color="r", label="mean")
    ax.set_xlabel("events per person (life-long registry history)")
    ax.set_ylabel("people")
    ax.set_title(f"medweave-sandbox registry_history=true, {n:,} people")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--events-per-person", type=float, default=300)
    parser.add_argument("--workers", type=int, default=0, help="0: one per core")
    parser.add_argument("--comorbidity", choices=["true", "false"], default="true")
    parser.add_argument(
        "--keep", type=Path, help="leave the cohorts here (as n<subjects>) instead of deleting them"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON lines, the plot")
    args = parser.parse_args()
    machine = f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    args.results.mkdir(parents=True, exist_ok=True)
    for n in args.subjects:
        work = Path(tempfile.mkdtemp(prefix="registry-sandbox-"))
        out = (args.keep or work) / f"n{n}"
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            command, result = generate(n, args.events_per_person, args.workers, out, args.comorbidity)
            counts = events_per_person(out)
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            meta = json.loads((out / "metadata/dataset.json").read_text())["medweave"]
            if n == max(args.subjects):
                plot(counts, n, args.results / "registry_sandbox_events_per_person.png")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        total = int(counts.sum())
        result |= {
            "subjects": n,
            "events": total,
            "events_per_person": {
                "mean": round(float(counts.mean()), 1),
                "median": float(np.median(counts)),
                "p90": float(np.quantile(counts, 0.9)),
                "p99": float(np.quantile(counts, 0.99)),
                "max": int(counts.max()),
                "share_over_1000": round(float((counts > 1000).mean()), 4),
            },
            "us_per_event": round(result["wall_s"] / total * 1e6, 3),
            "cohort_gb": round(size / 1e9, 2),
            "oracle_auroc_held_out": {
                task: o["auroc"].get("held_out") for task, o in meta["oracle"].items() if "auroc" in o
            },
            "oracle_auroc_ehr_only_held_out": {
                task: o["auroc_by_modality"][c.EHR_CODES].get("held_out")
                for task, o in meta["oracle"].items()
                if "auroc" in o
            },
            "command": " ".join(["medweave-sandbox", *command[3:]]),
            "machine": machine,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        }
        line = json.dumps(result)
        print(line, flush=True)
        with open(args.results / f"{stamp}-registry_sandbox.jsonl", "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
