"""EHR preparation at registry scale, and the DataModule that reads its shards.

    medweave-sandbox out=/data/c10k n_subjects=10000 ...          # one cohort per size
    python benchmarks/ehr_prepare_scale.py --cohort /data/c10k --cohort /data/c100k --workers 2

For each cohort, in one run and on the same files (every engine on an empty output folder):

(a) medweave: ``prepare()`` with data.modalities=[ehr_codes] and ``workers`` processes
    (data/ehr/: map per unit of shards, vocabulary reduced from partial counts, per-shard cache).
(b) polars: the same ``prepare()`` with each unit's map (``shards.build_unit``) replaced by
    ehr_polars_map.build_unit: the same reads and checks, the labels joined, the cut at
    prediction time, the sort, the code dictionary, the counts and the truncation written as
    polars queries (the streaming engine where it streams). It writes the same files, and the
    run checks that: every file of (a)'s and (b)'s caches is hashed and compared
    (``same_bytes``). The reduce and the index are medweave's in both.
(c) MEDS-Transforms (``MEDS_transform-pipeline``, the joblib launcher with ``workers`` workers):
    reshard_to_split (its train-only statistics read data/train/), aggregate_code_metadata on
    train (code/n_subjects, values/n_subjects, values/n_occurrences, values/sum, values/sum_sqd),
    fit_vocabulary_indices, normalization. It writes every event, normalised; it does not cut at
    prediction time (MEDS-Torch-Data does that when it reads) nor truncate, so it does less
    label-aware work and more writing than (a).

Each runs in a child process tree, measured by _measure.py: wall time, CPU time (user + system
of the tree), the peak over time of the summed RSS of the tree (sampled every 0.1 s; shared pages
count once per process, so this overstates) and the load average. Per event: wall (and CPU)
time / events in data/.

(d) The DataModule on (a)'s cache: time from constructing CohortDataModule (modules imported)
    to the first train batch (data.num_workers=--loader-workers; setup() alone also given),
    train-loader samples/s over --batches batches after 5 warm-up ones, RSS of the main process
    and of each loader worker; and the samples/s a training step consumes (the quickstart model,
    data.modalities=[ehr_codes]: forward, loss, backward, clipping, optimizer step; torch's
    default threads) on --steps batches. Target: loader >= 2x training.

Prints one JSON line per cohort; --out appends them to a file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _measure import MB, measure

HERE = Path(__file__).resolve()


# ------------------------------------------------------------------------------ measurement
def monitored(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``: its figures (_measure.py) and its stdout; an error if it fails."""
    run = measure(cmd, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({run.returncode}):\n{run.stderr[-4000:]}")
    return {**run.summary(), "stdout": run.stdout}


def cache_digests(cache: Path) -> dict[str, str]:
    """Every file of a prepared cache by path: what (a) and (b) must agree on, byte for byte."""
    digests = {}
    for path in sorted(cache.rglob("*")):
        if path.is_file() and not path.name.endswith(".lock"):
            digests[path.relative_to(cache).as_posix()] = hashlib.blake2b(path.read_bytes()).hexdigest()
    return digests


def n_events(root: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted((root / "data").rglob("*.parquet")))


# ------------------------------------------------------------------------------------ (a)
def child_medweave(root: str, cache: str, task: str, workers: int, max_events: int) -> None:
    from medweave.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(task=task, modalities=("ehr_codes",), max_events=max_events)
    print(prepare(Path(root), Path(cache), cfg, workers=workers))


# ------------------------------------------------------------------------------------ (b)
def child_polars(root: str, cache: str, task: str, workers: int, max_events: int) -> None:
    from functools import partial

    import ehr_polars_map

    from medweave.data.ehr import shards

    # prepare_codes calls shards.run_units: here it maps every unit with polars
    shards.run_units = partial(shards.run_units, build=ehr_polars_map.build_unit)
    child_medweave(root, cache, task, workers, max_events)


# ------------------------------------------------------------------------------------ (c)
def meds_transforms(root: Path, out: Path, workers: int, binary: str) -> dict:
    """MEDS-Transforms' runner on the same cohort: its pipeline and stage-runner files."""
    pipeline = {
        "input_dir": str(root),
        "output_dir": str(out),
        "description": "medweave benchmark: train statistics, vocabulary, normalisation",
        "stages": [
            "reshard_to_split",
            {
                "fit_normalization": {
                    "_base_stage": "aggregate_code_metadata",
                    "aggregations": [
                        "code/n_subjects",
                        "code/n_occurrences",
                        "values/n_subjects",
                        "values/n_occurrences",
                        "values/sum",
                        "values/sum_sqd",
                    ],
                }
            },
            "fit_vocabulary_indices",
            "normalization",
        ],
    }
    runner = {"parallelize": {"n_workers": workers, "launcher": "joblib"}}
    import yaml

    (out.parent / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    (out.parent / "runner.yaml").write_text(yaml.safe_dump(runner))
    env = {**os.environ, "PATH": f"{Path(binary).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # polling_time: how long a worker sleeps while another writes the shard map (default 300 s)
    stage_runner = ["--stage_runner_fp", str(out.parent / "runner.yaml"), "--overrides", "polling_time=1"]
    return monitored([binary, str(out.parent / "pipeline.yaml"), *stage_runner], env=env)


# ------------------------------------------------------------------------------------ (d)
def child_loader(spec: str) -> None:
    import numpy as np
    import psutil
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict

    import medweave.data.datamodule  # noqa: F401 - imported before the clock starts, as by a launch
    from medweave.cli.hydra_main import config_dir
    from medweave.models.build import build_model

    s = json.loads(spec)
    overrides = [
        "experiment=quickstart",
        f"data.root={s['root']}",
        f"task={s['task']}",
        "data.modalities=[ehr_codes]",
        f"data.max_events={s['max_events']}",
        f"data.num_workers={s['loader_workers']}",
        f"paths.cache_dir={s['cache']}",
        f"paths.log_dir={s['work']}/logs",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = f"{s['work']}/run"
    # This config's cache key differs from (a)'s (the quickstart's other data settings): the first
    # setup reuses (a)'s EHR shards and only reduces and indexes, as a second task would.
    start = time.perf_counter()
    instantiate(cfg.data).setup()
    reuse_shards_s = time.perf_counter() - start
    start = time.perf_counter()  # a launch on a prepared cache, as every later run and rank
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    setup_s = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    stream = iter(loader)
    first = next(stream)
    first_batch_s = time.perf_counter() - start
    for _ in range(5):
        next(stream)
    samples, t0 = 0, time.perf_counter()
    for _ in range(s["batches"]):
        try:
            batch = next(stream)
        except StopIteration:
            stream = iter(loader)
            batch = next(stream)
        samples += int(batch["targets"].shape[0])
    loader_s = time.perf_counter() - t0
    me = psutil.Process()
    rss = {"main_mb": round(me.memory_info().rss / MB)}
    rss["workers_mb"] = [round(p.memory_info().rss / MB) for p in me.children(recursive=True)]
    rss["workers_uss_mb"] = [round(p.memory_full_info().uss / MB) for p in me.children(recursive=True)]
    rss["main_uss_mb"] = round(me.memory_full_info().uss / MB)
    del stream, loader

    torch.manual_seed(0)
    model = build_model(
        cfg.model, datamodule.modalities, datamodule.encoder_inputs(), head_inputs=datamodule.head_inputs()
    ).train()
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
    more = iter(datamodule.train_dataloader())
    batches = [first, *(next(more) for _ in range(s["steps"] + 2))]
    times = []
    for batch in batches:
        t = time.perf_counter()
        loss = model.head.loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        times.append(time.perf_counter() - t)
    timed = times[3:]
    step_rate = sum(int(b["targets"].shape[0]) for b in batches[3:]) / sum(timed)
    print(
        json.dumps(
            {
                "first_batch_s": round(first_batch_s, 2),
                "of_which_setup_s": round(setup_s, 2),
                "new_task_from_existing_shards_s": round(reuse_shards_s, 2),
                "loader_samples_per_s": round(samples / loader_s),
                "training_samples_per_s": round(step_rate),
                "loader_over_training": round(samples / loader_s / step_rate, 2),
                "rss": rss,
                "batch_size": int(first["targets"].shape[0]),
                "train_subjects": len(datamodule.cohort.rows("train")),
                "median_events_per_sample": float(
                    np.median((first["ehr_codes"]["codes"] > 0).sum(1).numpy())
                ),
            }
        )
    )


# ------------------------------------------------------------------------------------ main
def run_cohort(root: Path, args, work: Path) -> dict:
    events = n_events(root)
    result = {"cohort": root.name, "subjects": None, "events": events, "workers": args.workers}
    import pyarrow.parquet as pq

    result["subjects"] = pq.read_metadata(root / "metadata/subject_splits.parquet").num_rows
    py = [sys.executable, str(HERE), "--child"]
    cache = work / f"{root.name}-cache"
    common = [args.task, str(args.workers), str(args.max_events)]
    caches = {}
    for engine in ("medweave", "polars"):
        if engine in args.engines:
            caches[engine] = cache if engine == "medweave" else work / f"{root.name}-polars-cache"
            run = monitored([*py, engine, str(root), str(caches[engine]), *common])
            result[engine] = {k: v for k, v in run.items() if k != "stdout"}
            print(json.dumps({engine: result[engine]}), file=sys.stderr, flush=True)
    if len(caches) == 2:
        result["same_bytes"] = cache_digests(caches["medweave"]) == cache_digests(caches["polars"])
        result["cache_files"] = len(cache_digests(caches["medweave"]))
        shutil.rmtree(caches["polars"])
    if "meds-transforms" in args.engines:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        binary = args.meds_transforms or shutil.which("MEDS_transform-pipeline", path=path)
        if not binary:
            result["meds_transforms"] = "MEDS_transform-pipeline not found (pip install meds-transforms)"
        else:
            out = work / f"{root.name}-mt" / "out"
            out.parent.mkdir()
            try:
                run = meds_transforms(root, out, args.workers, binary)
                result["meds_transforms"] = {k: v for k, v in run.items() if k != "stdout"}
            except RuntimeError as err:  # recorded: the other engines' figures still count
                result["meds_transforms"] = f"failed: {str(err)[-500:]}"
            print(json.dumps({"meds_transforms": result["meds_transforms"]}), file=sys.stderr, flush=True)
            shutil.rmtree(out.parent)
    for engine in ("medweave", "polars", "meds_transforms"):
        if isinstance(result.get(engine), dict):
            result[engine]["us_per_event"] = round(result[engine]["wall_s"] / events * 1e6, 3)
            result[engine]["cpu_us_per_event"] = round(result[engine]["cpu_s"] / events * 1e6, 3)
    if "medweave" in args.engines and args.batches:
        spec = {
            "root": str(root),
            "task": args.task,
            "cache": str(cache),
            "work": str(work),
            "max_events": args.max_events,
            "loader_workers": args.loader_workers,
            "batches": args.batches,
            "steps": args.steps,
        }
        run = monitored([*py, "loader", json.dumps(spec)])
        result["datamodule"] = json.loads(run["stdout"].strip().splitlines()[-1])
        result["datamodule"]["peak_rss_sum_mb"] = run["peak_rss_mb"]
    shutil.rmtree(cache, ignore_errors=True)
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "loader":
            return child_loader(rest[0])
        fn = {"medweave": child_medweave, "polars": child_polars}[kind]
        return fn(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, action="append", required=True)
    parser.add_argument("--task", default="cvd_onset_1y")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--max-events", type=int, default=256)
    parser.add_argument("--engines", nargs="+", default=["medweave", "polars", "meds-transforms"])
    parser.add_argument("--meds-transforms", help="path of MEDS_transform-pipeline (default: on PATH)")
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=200, help="(d) loader batches timed; 0 skips (d)")
    parser.add_argument("--steps", type=int, default=20, help="(d) training steps timed")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, help="append the JSON lines here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ehr-scale-", dir=args.work))
    try:
        for root in args.cohort:
            result = {
                "benchmark": "ehr_prepare_scale",
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {os.cpu_count()} cores",
                **run_cohort(root.resolve(), args, work),
            }
            print(json.dumps(result), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(result) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
