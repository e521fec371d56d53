"""Scale of work: training step time and peak memory as one size grows 10x from a small base.

    python benchmarks/scale.py                    # quickstart model, base 200 subjects, ~3 min on 2 cores
    python benchmarks/scale.py --smoke --subjects 40 --variants 20 --steps 2 --warmup 1   # a check

The model is the quickstart's (attention fusion, all four modalities, batch 64); the base is
data.max_events=32, data.image_size=32 and a sandbox of --subjects subjects with --variants
variants. Each row grows one of them, the rest stay at the base:
- subjects x10: the step does not change (same batch size); the epoch does. The row reports the
  epoch time, the steps per epoch, and the prepared cache's size and preparation time.
- events x10 (data.max_events 32 -> 320): SandboxConfig has no knob for events per subject (the
  visit rate comes from the latent model: about 40 events before prediction time), so this row's
  cohort is the base cohort with each subject's timed EHR events (notes excluded) written
  --factor times, each copy k days earlier than the last. "events_per_subject" is the mean number
  the prepared cache keeps for a training subject (at most max_events).
- image_size x10 (data.image_size 32 -> 320): the sandbox's 128 x 128 radiographs are resized
  to 320 by preparation; the step's cost depends on data.image_size only. --image-factor 4 gives
  128, if 320 is too slow somewhere.
- variants x10 and x100 (100 -> 1,000 -> 10,000 genotyped variants).

Every row runs in a fresh process (benchmarks/fusion_cost.py's method): it builds the model, takes
one fixed batch (the first 64 training subjects), marks its resident memory and resets the peak,
then runs --warmup + --steps plain PyTorch training steps (forward, backward, AdamW; no data
loading, no Lightning). step_s is the median of the timed steps; step_peak_mb is the peak resident
memory above the mark (activations, gradients, optimizer state, allocator slack; on CUDA
max_memory_allocated). epoch_s is then one epoch of the training split in the same loop, data
loading (num_workers=0) included. prepare_s and cache_mb are the preparation (cohort files ->
memory-mapped cache, timed in the parent after a warm-up preparation that loads its libraries) and
the size of the cache it wrote. Prints one JSON line with one entry per row in "rows".
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fusion_cost import (
    compose_config,
    fixed_batch,
    make_step,
    make_variant,
    memory_probe,
    pick_device,
    to_device,
)


def densify_events(root: Path, factor: int) -> None:
    """Write each subject's timed, non-note events ``factor`` times (copy k moved k days earlier)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from medweave.data import contract as c

    for path in sorted((root / c.EVENTS_DIR).glob("*.parquet")):
        table = pq.read_table(path)
        timed = table.filter(
            pc.and_(pc.is_valid(table["time"]), pc.invert(pc.starts_with(table["code"], c.NOTE_PREFIX)))
        )
        column = table.schema.get_field_index("time")
        copies = [table]
        for k in range(1, factor):
            shift = pa.scalar(k * 86_400 * 10**6, pa.duration("us"))
            copies.append(timed.set_column(column, "time", pc.subtract(timed["time"], shift)))
        out = pa.concat_tables(copies)
        # In subject order, static events (no time) first, as the generator writes them.
        keys = pa.table(
            {
                "subject": out["subject_id"],
                "time": pc.fill_null(out["time"].cast(pa.int64()), pa.scalar(-(2**63), pa.int64())),
            }
        )
        order = pc.sort_indices(keys, sort_keys=[("subject", "ascending"), ("time", "ascending")])
        pq.write_table(out.take(order), path)


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def run_child(spec: dict) -> dict:
    """In a fresh process: the fixed-batch steps (time and peak memory), then one epoch."""
    import torch
    from hydra.utils import instantiate

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    cfg = compose_config(Path(spec["root"]), Path(spec["work"]), spec["smoke"], spec["overrides"])
    datamodule = instantiate(cfg.data)
    batch = fixed_batch(datamodule, device)
    module, loss_fn = make_variant(cfg, datamodule, "fused", device)
    step = make_step(cfg, module, loss_fn, batch, device)
    peak = memory_probe(device)
    times = []
    for _ in range(spec["warmup"] + spec["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    memory = peak()
    peak = memory_probe(device)
    start, n = time.perf_counter(), 0
    for b in datamodule.train_dataloader():
        step(to_device(b, device))
        n += 1
    epoch_s = time.perf_counter() - start
    epoch = peak()
    return {
        "step_s": statistics.median(times[spec["warmup"] :]),
        "step_peak_mb": memory["step_peak_mb"],
        "baseline_mb": memory["baseline_mb"],
        "peak_rss_mb": memory.get("peak_rss_mb"),
        "memory_method": memory["method"],
        "steps_per_epoch": n,
        "epoch_s": epoch_s,
        "epoch_peak_rss_mb": epoch.get("peak_rss_mb"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200, help="base sandbox cohort size")
    parser.add_argument("--events", type=int, default=32, help="base data.max_events")
    parser.add_argument("--image-size", type=int, default=32, help="base data.image_size")
    parser.add_argument("--variants", type=int, default=100, help="base number of sandbox variants")
    parser.add_argument("--factor", type=int, default=10, help="growth of subjects, events and variants")
    parser.add_argument("--image-factor", type=int, default=10, help="growth of data.image_size")
    parser.add_argument(
        "--variant-growths", type=int, default=2, help="variant rows: x factor, x factor^2..."
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up steps per row")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--smoke", action="store_true", help="debug=smoke model instead of quickstart")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return

    import torch
    from hydra.utils import instantiate

    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    device = pick_device(args.device)
    f = args.factor
    base = {"subjects": args.subjects, "max_events": args.events, "image_size": args.image_size}
    base["variants"] = args.variants
    rows = [("base", base), ("subjects", base | {"subjects": args.subjects * f})]
    rows += [("events", base | {"max_events": args.events * f})]
    rows += [("image_size", base | {"image_size": args.image_size * args.image_factor})]
    rows += [
        ("variants", base | {"variants": args.variants * f**k}) for k in range(1, args.variant_growths + 1)
    ]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cohorts: dict[tuple, Path] = {}

        def cohort(grows: str, size: dict) -> Path:
            key = (size["subjects"], size["variants"], grows == "events")
            if key not in cohorts:
                folder = work / f"cohort-{size['subjects']}-{size['variants']}-{grows == 'events'}"
                if grows == "events":
                    shutil.copytree(cohort("base", base), folder)
                    densify_events(folder, f)
                else:
                    config = SandboxConfig(n_subjects=size["subjects"], n_variants=size["variants"], seed=0)
                    generate_cohort(folder, config)
                cohorts[key] = folder
            return cohorts[key]

        for n, (grows, size) in enumerate(rows):
            root = cohort(grows, size)
            overrides = [f"data.max_events={size['max_events']}", f"data.image_size={size['image_size']}"]
            if n == 0:  # load the preparation's libraries once, outside any timing
                warm = compose_config(
                    root, work, args.smoke, overrides + [f"paths.cache_dir={work / 'warm'}"]
                )
                instantiate(warm.data).setup()
            datamodule = instantiate(compose_config(root, work, args.smoke, overrides).data)
            start = time.perf_counter()
            datamodule.setup()
            prepare_s = time.perf_counter() - start
            folder = datamodule.cohort.folder
            train = datamodule.cohort.rows("train")
            events = datamodule.cohort.ehr.batch(train)["codes"]
            spec = {
                "root": str(root),
                "work": str(work),
                "smoke": args.smoke,
                "overrides": overrides,
                "device": device,
                "threads": torch.get_num_threads(),
                "steps": args.steps,
                "warmup": args.warmup,
            }
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"row {grows} {size} failed:\n{proc.stderr[-3000:]}")
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(
                {"grows": grows}
                | size
                | {"events_per_subject": float((events > 0).sum(1).mean())}
                | {k: v for k, v in child.items() if k != "memory_method"}
                | {"prepare_s": prepare_s, "cache_mb": folder_mb(folder)}
            )
            method = child["memory_method"]

    for row in results:
        row["step_vs_base"] = row["step_s"] / results[0]["step_s"]
        row["step_peak_vs_base"] = row["step_peak_mb"] / max(results[0]["step_peak_mb"], 1e-9)
    machine = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.machine()} CPU"
    result = {
        "benchmark": "scale",
        "model": "debug=smoke" if args.smoke else "experiment=quickstart",
        "batch_size": int(datamodule.batch_size),
        "steps": args.steps,
        "warmup": args.warmup,
        "device": device,
        "memory_method": method,
        "rows": results,
        "machine": f"{machine}, {torch.get_num_threads()} torch threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
