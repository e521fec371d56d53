"""`medweave-train task=<ACES file>` end to end on a registry-scale cohort: time and memory per phase.

    nice -n 5 python benchmarks/aces_train_scale.py --cohort /data/r1m                 # cvd_onset_1y
    nice -n 5 python benchmarks/aces_train_scale.py --cohort /data/r1m \\
        --task configs/aces/death_5y_after_k76.yaml
    python benchmarks/aces_train_scale.py --cohort <tiny sandbox> --max-steps 5 --batch-size 16  # a check

Runs the real entry point as a child process, EHR only (data.modalities=[ehr_codes]), for
--max-steps training steps with a validation every --val-every steps, then the test of the best
checkpoint and the evaluation report on the whole held-out split. While it runs, the summed RSS
of its process tree (the trainer, the preparation workers, the loader workers) is sampled every
0.2 s; its log lines (their timestamps) and a callback added for the run (``StepTimes``, below:
the time of every training step) split the wall time into phases:

- labels: launch to "ACES labels for ..." (imports, config, fingerprint, ACES over every shard);
- preparation: to "Prepared cohort cache" (the EHR cache shards, the vocabulary, the index);
- first batch: to the end of the first training step (model, MLflow run, loader workers);
- training: steps per second over the steps after the first 10 (validation time left out);
- test + report: the test of the best checkpoint to the end of the run.

Then a second child opens the prepared cache as a later launch would and reads --loader-batches
training batches with the same loader workers: loader samples/s, beside the samples/s the
training steps consumed. CPU time (user+sys) of both children and the load average are recorded.
Prints one JSON line and appends it to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
RESULTS = HERE.parent / "results"
GB = 1e9
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


class StepTimes:
    """A Lightning callback (added as +callbacks.step_times): wall-clock times of the run's steps."""

    def __init__(self, path: str):
        self.path, self.times = Path(path), {"steps": [], "val": []}

    def _save(self):
        self.path.write_text(json.dumps(self.times))

    def on_train_batch_end(self, trainer, *args):
        self.times["steps"].append(time.time())
        if len(self.times["steps"]) == 1:
            self._save()

    def on_validation_start(self, trainer, *args):
        self._val = time.time()

    def on_validation_end(self, trainer, *args):
        self.times["val"].append([self._val, time.time()])

    def on_train_end(self, trainer, *args):
        self._save()

    def on_test_start(self, trainer, *args):
        self.times["test_start"] = time.time()
        self._save()

    # Lightning calls hooks by name on any object in trainer.callbacks: no base class needed,
    # but it checks isinstance(Callback); hence the subclass made in ``callback``.


def callback(path: str):
    from lightning.pytorch.callbacks import Callback

    return type("StepTimesCallback", (StepTimes, Callback), {})(path)


def overrides(args, work: Path) -> list[str]:
    return [
        f"task={Path(args.task).resolve()}",
        f"data.root={args.cohort}",
        "data.modalities=[ehr_codes]",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.loader_workers}",
        f"data.prepare_workers={args.prepare_workers}",
        f"data.max_events={args.max_events}",
        f"++trainer.max_steps={args.max_steps}",
        "++trainer.max_epochs=-1",
        f"++trainer.val_check_interval={args.val_every}",
        "++trainer.check_val_every_n_epoch=null",
        f"++trainer.limit_val_batches={args.val_batches}",
        "trainer.enable_progress_bar=false",
        f"evaluation.bootstrap={args.bootstrap}",
        "model.scheduler=null",
        f"paths.log_dir={work}/logs",
        *args.overrides,
        f"hydra.run.dir={work}/run",  # last: the loader child leaves it out
    ]


def tree_memory(proc) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) over the process and its children: RSS counts the pages a forked
    loader worker shares with the trainer once per process, PSS once."""
    import psutil

    rss = pss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def run_monitored(command: list[str], log: Path, env: dict):
    """(wall s, [(time, summed RSS, summed PSS)], CPU s of the child tree, start) of ``command``."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    samples = []
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            samples.append((time.time(), *tree_memory(watched)))
            time.sleep(0.2)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if child.returncode:
        raise SystemExit(f"{' '.join(command[:4])} failed ({child.returncode}):\n{log.read_text()[-4000:]}")
    return time.time() - start, samples, cpu, start


def log_time(log: Path, pattern: str) -> float | None:
    """The time of the first log line containing ``pattern``."""
    for line in log.read_text().splitlines():
        if pattern in line and (m := STAMP.match(line)):
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def peak(samples, lo: float, hi: float, column: int = 1) -> float:
    inside = [s[column] for s in samples if lo <= s[0] <= hi]
    return round(max(inside, default=0) / GB, 2)


def child_loader(spec: str) -> None:
    """Open the prepared cache as a later launch does and time the training loader."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from medweave.cli.hydra_main import config_dir, task_file_overrides

    s = json.loads(spec)
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=task_file_overrides(s["overrides"][:-1]))
    with open_dict(cfg):
        cfg.paths.output_dir = s["work"] + "/loader"
    start = time.perf_counter()
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    setup_s = time.perf_counter() - start
    loader = datamodule.train_dataloader()
    stream = iter(loader)

    def batch():
        nonlocal stream
        try:
            return next(stream)
        except StopIteration:  # a small cohort: the next epoch
            stream = iter(loader)
            return next(stream)

    for _ in range(5):
        batch()
    first_s = time.perf_counter() - start
    samples, t0 = 0, time.perf_counter()
    for _ in range(s["batches"]):
        samples += int(batch()["targets"].shape[0])
    rate = samples / (time.perf_counter() - t0)
    out = {"setup_s": round(setup_s, 2), "warm_s": round(first_s, 2), "samples_per_s": round(rate)}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--task", default=str(ROOT / "configs/aces/cvd_onset_1y.yaml"))
    parser.add_argument("--work", type=Path, help="cache, logs and run folder (default: <cohort>-train)")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--val-batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-events", type=int, default=128)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--prepare-workers", type=int, default=2)
    parser.add_argument("--loader-batches", type=int, default=100)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--child-loader", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="more medweave-train overrides (key=value)")
    args = parser.parse_args()
    if args.child_loader:
        return child_loader(args.child_loader)

    args.cohort = args.cohort.resolve()
    work = (args.work or args.cohort.with_name(args.cohort.name + "-train")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    steps_file = work / "step_times.json"
    steps_file.unlink(missing_ok=True)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
        "TQDM_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }
    train_overrides = [
        *overrides(args, work),
        f"+callbacks.step_times._target_={HERE.stem}.callback",
        f"+callbacks.step_times.path={steps_file}",
    ]
    command = [sys.executable, "-m", "medweave.cli.train", *train_overrides]
    load = os.getloadavg()
    log = work / "train.out"
    wall, samples, cpu, t0 = run_monitored(command, log, env)
    end = t0 + wall
    steps = json.loads(steps_file.read_text())
    labelled = log_time(log, "ACES labels for")
    prepared = log_time(log, "Prepared cohort cache") or log_time(log, "Using prepared cache")
    n_labels = re.search(r"ACES labels for \S+: (\d+) row", log.read_text())
    step_t = steps["steps"]
    pairs = list(zip(step_t[10:], step_t[11:], strict=False))
    # a step whose interval holds a validation (or its checkpoint) is left out
    timed = [b - a for a, b in pairs if not any(a <= v0 <= b for v0, _ in steps["val"])]
    steps_per_s = len(timed) / sum(timed) if timed else float("nan")
    test_start = steps.get("test_start", step_t[-1])
    metrics = {}
    for line in log.read_text().splitlines():
        if "Metrics: " in line:
            metrics = ast.literal_eval(re.sub(r"\bnan\b", "None", line.split("Metrics: ", 1)[1]))

    loader_cmd = [sys.executable, str(HERE), "--cohort", str(args.cohort), "--child-loader"]
    spec = {"overrides": overrides(args, work), "work": str(work), "batches": args.loader_batches}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([*loader_cmd, json.dumps(spec)], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"the loader child failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    loader = json.loads(out.strip().splitlines()[-1])
    loader["cpu_s"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1)

    meta = json.loads((args.cohort / "metadata/dataset.json").read_text()).get("medweave", {})
    name = Path(args.task).stem
    oracle = meta.get("oracle", {}).get(name, {})
    events = sum(__import__("pyarrow.parquet").parquet.ParquetFile(p).metadata.num_rows
                 for p in sorted((args.cohort / "data").rglob("*.parquet")))  # fmt: skip
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores",
        "load_average_at_start": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cohort": str(args.cohort),
        "subjects": meta.get("n_subjects"),
        "events": events,
        "task": name,
        "label_rows": int(n_labels.group(1)) if n_labels else None,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "labels_s": round(labelled - t0, 1) if labelled else None,
        "preparation_s": round(prepared - labelled, 1) if prepared and labelled else None,
        "first_batch_s": round(step_t[0] - prepared, 1) if prepared else None,
        "first_batch_from_launch_s": round(step_t[0] - t0, 1),
        "steps": len(step_t),
        "train_steps_per_s": round(steps_per_s, 2),
        "train_samples_per_s": round(steps_per_s * args.batch_size),
        "loader_samples_per_s": loader["samples_per_s"],
        "loader_over_training": round(loader["samples_per_s"] / (steps_per_s * args.batch_size), 1),
        "test_and_report_s": round(end - test_start, 1),
        "peak_rss_gb": {
            "whole_run": peak(samples, t0, end),
            "labels": peak(samples, t0, labelled or t0),
            "preparation": peak(samples, labelled or t0, prepared or t0),
            "training": peak(samples, step_t[0], test_start),
            "test_and_report": peak(samples, test_start, end),
        },
        "peak_pss_gb": peak(samples, t0, end, 2),
        "test_auroc": metrics.get("test/auroc"),
        "test_auprc": metrics.get("test/auprc"),
        "test_c_index": metrics.get("test/c_index"),
        "oracle_held_out": {k: v.get("held_out") for k, v in oracle.items() if isinstance(v, dict)}
        | {
            f"{k} {m}": v.get("held_out")
            for k, by in oracle.items()
            if k.endswith("_by_modality")
            for m, v in by.items()
        },
        "later_launch_on_the_cache": loader,
        "command": "medweave-train " + " ".join(train_overrides[:-2]),
    }
    line = json.dumps(result)
    print(line, flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M")
    with open(args.results / f"{stamp}-aces_train_scale.jsonl", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
