"""Data throughput: the train DataLoader against training, the prepared cache against raw files, and
one cache shared by all DDP ranks of a node.

    python benchmarks/data_throughput.py                     # quickstart model, 2,000 subjects
    python benchmarks/data_throughput.py --smoke --subjects 120 --batches 4 --steps 2 --ddp-steps 3

(a) Loader against training, per process. The loader side iterates
    ``CohortDataModule.train_dataloader()`` (epoch after epoch, no model) with data.num_workers=0
    and 1 and counts the subjects it delivers per second, after a few warm-up batches (worker
    start-up). The training side times the quickstart model's training step (forward, loss,
    backward, gradient clipping, optimizer step; torch's default threads) on the same batches,
    held in memory: the samples per second that training consumes. Ratio = loader / training;
    the target is >= 2.
(b) An epoch from the prepared cache against an epoch that parses the raw cohort files. The cached
    side is one full epoch of the train loader (the config's data.num_workers), from memory-mapped
    arrays. The raw side is not a loader that exists: its honest lower bound is what ``prepare()``
    does on an empty cache, which reads the MEDS parquet events, decodes the DICOM images, reads the
    VCF and tokenises the notes, for all splits (an epoch would do the train split's share of
    that every time). ``prepare()`` runs twice on empty caches: once fitting the vocabularies
    (what training does) and once with them given (what evaluation does, no fitting); the lower
    bound is the second, less the cohort fingerprint (hashing the files' bytes for the cache
    key) that ``prepare()`` also does. Both sides read files just written (a warm page cache).
    Ratio = cached epoch / raw lower bound; the target is <= 0.2.
(c) One cache, shared by the DDP ranks of a node. A real ``medweave-train trainer=ddp
    trainer.devices=2 trainer.accelerator=cpu`` launch (OMP_NUM_THREADS=1 per rank, no validation,
    callbacks or test) on an empty paths.cache_dir. While it trains, this process samples
    /proc/<pid>/smaps of the ranks (the launched process and its descendants that map files
    inside the cache folder) every --sample-every seconds: Rss and Pss of those mappings per rank.
    Pages of a memory-mapped file are shared: Pss splits each page between the processes that map
    it, so the sum of Pss over ranks stays at most the size of the cache, while Rss counts it in
    each rank. The last sample in which every rank maps the cache is reported, with the number
    of cache folders on disk and their size.

(d) The same for 3D imaging. A second sandbox cohort of --volume-subjects subjects with CT
    volumes (32 x 64 x 64 voxels, written as DICOM series and NIfTI), data.modalities=[volume]:
    the loader against the volume model's training step (3D MONAI ResNet, model/encoder=
    volume_resnet), and a cached epoch against prepare() with the vocabularies given (reading
    every series, ordering slices, resampling), less the cohort fingerprint.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

MB = 1 << 20


def compose_config(root: Path, work: Path, smoke: bool, overrides: list[str] = ()):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from medweave.cli.hydra_main import config_dir

    base = ["debug=smoke" if smoke else "experiment=quickstart", f"data.root={root}"]
    base.append(f"paths.log_dir={work / 'logs'}")
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=base + list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
    return cfg


def batch_size_of(batch: dict) -> int:
    return int(batch["targets"].shape[0])


def epochs(loader):
    """Batches of the loader, epoch after epoch (a new epoch as training starts one)."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def loader_rate(datamodule, batches: int, warmup: int) -> dict:
    """Samples per second that train_dataloader() delivers, no model; warm-up batches not counted."""
    loader = datamodule.train_dataloader()
    stream = epochs(loader)
    for _ in range(warmup):
        next(stream)
    samples, start = 0, time.perf_counter()
    for _ in range(batches):
        samples += batch_size_of(next(stream))
    seconds = time.perf_counter() - start
    del stream, loader  # stops persistent workers
    return {"samples_per_s": samples / seconds, "batches": batches, "seconds": seconds}


def training_rate(cfg, datamodule, steps: int, warmup: int) -> dict:
    """Samples per second that the quickstart model's training step consumes (data not counted)."""
    import torch
    from hydra.utils import instantiate

    from medweave.models.build import build_model

    torch.manual_seed(cfg.seed)
    stream = epochs(datamodule.train_dataloader())
    batches = [next(stream) for _ in range(warmup + steps)]
    model = build_model(
        cfg.model, datamodule.modalities, datamodule.encoder_inputs(), head_inputs=datamodule.head_inputs()
    ).train()
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss = model.head.loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        times.append(time.perf_counter() - start)
    timed = times[warmup:]
    samples = sum(batch_size_of(b) for b in batches[warmup:])
    return {
        "samples_per_s": samples / sum(timed),
        "median_step_s": statistics.median(timed),
        "steps": len(timed),
        "torch_threads": torch.get_num_threads(),
    }


def cached_epoch(datamodule) -> dict:
    """One whole epoch of the train loader from the prepared cache."""
    start = time.perf_counter()
    batches = samples = 0
    for batch in datamodule.train_dataloader():
        batches, samples = batches + 1, samples + batch_size_of(batch)
    return {"seconds": time.perf_counter() - start, "batches": batches, "samples": samples}


def timed_prepare(root: Path, cache_dir: Path, prepare_config, vocab) -> float:
    from medweave.data.prepare import prepare

    start = time.perf_counter()
    prepare(root, cache_dir, prepare_config, vocab)
    return time.perf_counter() - start


def smaps_in(pid: int, folder: str) -> dict:
    """Rss and Pss (bytes) of this process's mappings of files inside ``folder``."""
    rss = pss = 0
    files, inside = set(), False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
                path = head[5].strip() if len(head) == 6 else ""
                inside = path.startswith(folder)
                if inside:
                    files.add(path)
            elif inside and head[0] == "Rss:":
                rss += int(head[1]) * 1024
            elif inside and head[0] == "Pss:":
                pss += int(head[1]) * 1024
    return {"rss": rss, "pss": pss, "files": len(files)}


def sample_ranks(pid: int, cache_dir: Path) -> dict[int, dict]:
    """The launched process and its descendants that map the cache, by rank (LOCAL_RANK, else 0)."""
    import psutil

    try:
        launched = psutil.Process(pid)
        procs = [launched, *launched.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    folder = f"{cache_dir}/"
    ranks = {}
    for proc in procs:
        try:
            usage = smaps_in(proc.pid, folder)
            if usage["files"]:
                rank = int(proc.environ().get("LOCAL_RANK", "0"))
                ranks[rank] = {"pid": proc.pid, **usage}
        except (psutil.Error, OSError):  # a process that just ended
            continue
    return ranks


def ddp_shared_cache(root: Path, work: Path, args) -> dict:
    """A 2-rank CPU DDP launch on an empty cache dir; samples the ranks' smaps while it trains."""
    run = work / "ddp"
    cache_dir = (run / "cache").resolve()
    command = [
        sys.executable, "-m", "medweave.cli.train",
        "debug=smoke" if args.smoke else "experiment=quickstart",
        f"data.root={root}", f"paths.log_dir={run}", f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={run / 'run'}", "trainer=ddp", "trainer.accelerator=cpu",
        f"trainer.devices={args.ranks}", "trainer.max_epochs=-1", f"++trainer.max_steps={args.ddp_steps}",
        "++trainer.limit_train_batches=null", "++trainer.limit_val_batches=0",
        "++trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
        "callbacks=none", "logger=csv", "test=false", "evaluation.enabled=false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run.mkdir(parents=True)
    log_path = run / "train.log"
    last, samples = {}, 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                ranks = sample_ranks(proc.pid, cache_dir)
                if len(ranks) >= args.ranks:
                    last, samples = ranks, samples + 1
                time.sleep(args.sample_every)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    if proc.returncode != 0:
        sys.exit(f"DDP launch failed:\n{log_path.read_text()[-3000:]}")
    if not last:
        sys.exit(f"no sample found {args.ranks} ranks mapping {cache_dir}: make --ddp-steps larger")

    folders = [p for p in cache_dir.iterdir() if (p / "manifest.json").is_file()]
    leftovers = [p.name for p in cache_dir.iterdir() if p.is_dir() and p.name.startswith(".")]
    from medweave.data.store import FOLDERS  # the stores tasks share (data/store.py)

    shared = [d for d in (cache_dir / name for name in FOLDERS) if d.is_dir()]
    size = sum(f.stat().st_size for d in folders + shared for f in d.rglob("*") if f.is_file())
    mapped = sum(f.stat().st_size for d in folders + shared for f in d.rglob("*.npy"))
    pss_sum = sum(r["pss"] for r in last.values())
    return {
        "ranks": args.ranks,
        "max_steps": args.ddp_steps,
        "cache_folders": len(folders),
        "unfinished_cache_folders": len(leftovers),
        "cache_size_mb": size / MB,
        "cache_memory_mapped_files_mb": mapped / MB,
        "per_rank": {
            str(rank): {
                "rss_mb": r["rss"] / MB,
                "pss_mb": r["pss"] / MB,
                "mapped_files": r["files"],
            }
            for rank, r in sorted(last.items())
        },
        "rss_sum_mb": sum(r["rss"] for r in last.values()) / MB,
        "pss_sum_mb": pss_sum / MB,
        "pss_sum_to_cache_size": pss_sum / size,
        "samples_with_all_ranks": samples,
    }


def imaging_3d(work: Path, args) -> dict:
    """(d): loader against training and cached against raw, with the volume modality only."""
    from hydra.utils import instantiate

    from medweave.data.prepare import cohort_fingerprint
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    settings = SandboxConfig(n_subjects=args.volume_subjects, seed=1, volumes=True, missing={"image": 0.0})
    root = generate_cohort(work / "cohort_3d", settings)
    cfg = compose_config(root, work, args.smoke, ["data.modalities=[volume]"])
    datamodule = instantiate(cfg.data, cache_dir=str(work / "cache_3d_fit"))
    start = time.perf_counter()
    datamodule.setup()
    prepare_fit_s = time.perf_counter() - start
    prepare_vocab_s = timed_prepare(
        root, work / "cache_3d_given", datamodule.prepare_config, datamodule.cohort.vocab
    )
    start = time.perf_counter()
    cohort_fingerprint(root)
    raw_s = prepare_vocab_s - (time.perf_counter() - start)
    epoch = cached_epoch(datamodule)
    loader = loader_rate(datamodule, args.batches, args.warmup)
    training = training_rate(cfg, datamodule, args.steps, args.warmup)
    return {
        "subjects": args.volume_subjects,
        "volume_size": list(cfg.data.volume.size),
        "loader_samples_per_s": loader["samples_per_s"],
        "training_samples_per_s": training["samples_per_s"],
        "ratio_loader_to_training": loader["samples_per_s"] / training["samples_per_s"],
        "prepare_empty_cache_fitting_vocab_s": prepare_fit_s,
        "raw_epoch_lower_bound_s": raw_s,
        "cached_epoch_s": epoch["seconds"],
        "ratio_cached_to_raw": epoch["seconds"] / raw_s,
        "targets": {"loader_to_training": ">= 2", "cached_to_raw": "<= 0.2"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=2000, help="sandbox cohort size")
    parser.add_argument("--batches", type=int, default=200, help="(a) loader batches timed per setting")
    parser.add_argument("--steps", type=int, default=20, help="(a) training steps timed")
    parser.add_argument("--warmup", type=int, default=3, help="(a) batches / steps not timed")
    parser.add_argument("--workers", default="0,1", help="(a) data.num_workers settings, comma-separated")
    parser.add_argument("--ddp-steps", type=int, default=40, help="(c) max_steps of the DDP launch")
    parser.add_argument("--ranks", type=int, default=2, help="(c) trainer.devices of the DDP launch")
    parser.add_argument("--sample-every", type=float, default=0.5, help="(c) seconds between smaps samples")
    parser.add_argument("--smoke", action="store_true", help="debug=smoke model instead of quickstart")
    parser.add_argument("--volume-subjects", type=int, default=200, help="(d) subjects of the CT cohort")
    args = parser.parse_args()

    from hydra.utils import instantiate

    from medweave.data.prepare import cohort_fingerprint
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp).resolve()
        root = generate_cohort(work / "cohort", SandboxConfig(n_subjects=args.subjects, seed=0))
        cfg = compose_config(root, work, args.smoke)

        # (b) raw side: prepare() on empty caches, fitting the vocabularies and then with them given.
        datamodule = instantiate(cfg.data, cache_dir=str(work / "cache_fit"))
        start = time.perf_counter()
        datamodule.setup()
        prepare_fit_s = time.perf_counter() - start
        vocab = datamodule.cohort.vocab
        prepare_vocab_s = timed_prepare(root, work / "cache_given", datamodule.prepare_config, vocab)
        start = time.perf_counter()
        cohort_fingerprint(root)
        fingerprint_s = time.perf_counter() - start
        raw_lower_bound_s = prepare_vocab_s - fingerprint_s
        epoch = cached_epoch(datamodule)

        # (a) loader per num_workers setting, then the training step on the same batches.
        loader = {}
        for n in workers:
            dm = instantiate(cfg.data, cache_dir=str(work / "cache_fit"), num_workers=n)
            loader[str(n)] = loader_rate(dm, args.batches, args.warmup)
        training = training_rate(cfg, datamodule, args.steps, args.warmup)

        # (c) a 2-rank DDP launch on an empty cache dir.
        ddp = ddp_shared_cache(root, work, args)
        volumes = imaging_3d(work, args)

    consumed = training["samples_per_s"]
    result = {
        "benchmark": "data_throughput",
        "model": "debug=smoke" if args.smoke else "experiment=quickstart",
        "subjects": args.subjects,
        "train_subjects": epoch["samples"],
        "batch_size": int(cfg.data.batch_size),
        "loader_vs_training": {
            "loader_samples_per_s": {f"num_workers={n}": r["samples_per_s"] for n, r in loader.items()},
            "training_samples_per_s": consumed,
            "training_median_step_s": training["median_step_s"],
            "training_torch_threads": training["torch_threads"],
            "ratio_loader_to_training": {
                f"num_workers={n}": r["samples_per_s"] / consumed for n, r in loader.items()
            },
            "target": ">= 2",
            "timed_batches": args.batches,
            "timed_steps": training["steps"],
        },
        "cached_vs_raw_epoch": {
            "cached_epoch_s": epoch["seconds"],
            "cached_epoch_batches": epoch["batches"],
            "cached_epoch_num_workers": int(cfg.data.num_workers),
            "prepare_empty_cache_fitting_vocab_s": prepare_fit_s,
            "prepare_empty_cache_vocab_given_s": prepare_vocab_s,
            "cohort_fingerprint_s": fingerprint_s,
            "raw_epoch_lower_bound_s": raw_lower_bound_s,
            "raw_epoch_lower_bound": (
                "prepare() on an empty cache with the vocabularies given, less the cohort fingerprint: "
                "reads the MEDS parquet events, decodes the DICOM images, reads the VCF, tokenises the "
                "notes (all splits; no loader that parses raw files exists to time)"
            ),
            "ratio_cached_to_raw": epoch["seconds"] / raw_lower_bound_s,
            "target": "<= 0.2",
        },
        "ddp_shared_cache": ddp,
        "imaging_3d": volumes,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
