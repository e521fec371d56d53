"""What preparing several tasks writes: every modality for each task (before the shared stores)
against one store per modality that the tasks index (data/store.py).

    python benchmarks/modality_store.py --work /tmp/ms --dump /tmp/ms/new.npz
    PYTHONPATH=<checkout before the stores>/src python benchmarks/modality_store.py --work /tmp/ms-old \\
        --cohort /tmp/ms/cohort --dump /tmp/ms-old/old.npz       # the same tasks with the older code
    python benchmarks/modality_store.py --compare /tmp/ms-old/old.npz /tmp/ms/new.npz

Prepares ``--tasks`` one after the other into one empty cache folder (every modality: EHR codes,
notes, images, CT volumes, genomics dosages + PCs) and prints one JSON line: bytes under the
cache after each task, the largest store or task folders, and seconds per task. ``--dump``
writes every task's arrays as its DataModule serves them (sample order), and its vocabulary,
into one .npz, so two runs can be compared array by array (``--compare``: exact for integers,
images and vocabularies, the largest difference for floats).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

TASKS = "cvd_onset_1y,cvd_survival,t1d_onset_1y,hba1c_1y"
MODALITIES = ("ehr_codes", "text", "image", "volume", "genomics")


def du(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def task_type(root: Path, task: str) -> str:
    meta = json.loads((root / "metadata" / "dataset.json").read_text())["medweave"]
    return (meta.get("tasks") or {}).get(task, {}).get("type", "binary")


def arrays_of(folder: Path) -> dict[str, np.ndarray]:
    """The non-EHR arrays of a prepared folder in sample order, whichever layout wrote it."""
    try:
        from medweave.data.store import open_arrays
    except ImportError:  # before the stores: the arrays sat in the task's folder
        return {p.stem: np.load(p) for p in folder.glob("*.npy") if not p.name.startswith("ehr_")}
    return {name: np.asarray(a) for name, a in open_arrays(folder).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--cohort", type=Path, help="an existing sandbox (default: made under --work)")
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--dump", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)

    from medweave.data.prepare import PrepareConfig, prepare
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    root = args.cohort or args.work / "cohort"
    if not root.exists():
        generate_cohort(
            root,
            SandboxConfig(n_subjects=args.subjects, n_variants=400, image_size=64, volumes=True, seed=0),
        )
    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # every run starts from an empty cache
    cache.mkdir(parents=True)
    rows, dump = [], {}
    for task in args.tasks.split(","):
        cfg = PrepareConfig(
            task=task,
            modalities=MODALITIES,
            task_type=task_type(root, task),
            volume={"size": [16, 32, 32]},
            genomics={"sources": ["variants", "pcs"], "pcs": 4},
            min_subjects=2,
        )
        started, cpu = time.perf_counter(), os.times()
        folder = prepare(root, cache, cfg)
        after = os.times()
        rows.append(
            {
                "task": task,
                "wall_s": round(time.perf_counter() - started, 2),
                "cpu_s": round(after.user + after.system - cpu.user - cpu.system, 2),
                "cache_bytes_after": du(cache),
                "task_folder_bytes": du(folder),
            }
        )
        subjects = np.load(folder / "subjects.npz")
        for name, a in arrays_of(folder).items():
            dump[f"{task}/{name}"] = a
        dump[f"{task}/vocab"] = np.array((folder / "vocab.json").read_text())
        for name in ("subject_id", "target", *(k for k in subjects.files if k.startswith("present_"))):
            dump[f"{task}/{name}"] = subjects[name]
    tops = sorted(
        ((du(p), p.relative_to(cache).as_posix()) for p in cache.glob("*/*") if p.is_dir()), reverse=True
    )
    print(
        json.dumps(
            {
                "benchmark": "modality_store",
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "load_average": os.getloadavg()[0],
                "store_layout": "data.store" if _has_store() else "per task (before the stores)",
                "cohort": str(root),
                "modalities": list(MODALITIES),
                "config": {k: v for k, v in asdict(cfg).items() if k in ("volume", "genomics")},
                "tasks": rows,
                "cache_bytes": du(cache),
                "largest_folders": tops[:6],
            }
        )
    )
    if args.dump:
        args.dump.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.dump, **dump)


def _has_store() -> bool:
    try:
        import medweave.data.store  # noqa: F401
    except ImportError:
        return False
    return True


def compare(old: Path, new: Path) -> None:
    a, b = np.load(old), np.load(new)
    report = {
        "only_old": sorted(set(a.files) - set(b.files)),
        "only_new": sorted(set(b.files) - set(a.files)),
    }
    for name in sorted(set(a.files) & set(b.files)):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            report[name] = f"shape {x.shape} vs {y.shape}"
        elif x.dtype.kind in "fc":
            both = np.isnan(x) & np.isnan(y)
            report[name] = float(np.max(np.abs(np.where(both, 0, x - y)), initial=0.0))
        else:
            report[name] = "equal" if np.array_equal(x, y) else f"{int((x != y).sum())} differ"
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
