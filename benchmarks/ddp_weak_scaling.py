"""DDP weak scaling on CPU: the same per-rank batch on 1 and on 2 processes (gloo, one thread each).

    python benchmarks/ddp_weak_scaling.py                    # quickstart model, 2,000 subjects
    python benchmarks/ddp_weak_scaling.py --smoke --steps 3 --subjects 120   # seconds, a check
    python benchmarks/ddp_weak_scaling.py --pretrain --root /work/data/r10k  # medweave-pretrain

Each side is a real `medweave-train trainer=ddp` launch (Lightning starts the ranks, the Preemption
callback checks for a signal before every batch, no validation or checkpoints), with
OMP_NUM_THREADS=1 per rank so that two ranks use the two cores this machine has. A step is timed
from one batch's end to the next (data loading, forward, backward, the gradient all-reduce and
the optimizer), on every rank; a launch's step time is the slowest rank's median. Weak-scaling
efficiency = step time on 1 process / step time on 2 processes (1.0 = perfect: twice the samples
per second). A third launch, 2 processes with callbacks=none, gives what the Preemption
callback's per-batch check costs. Prints one JSON line.

``--pretrain`` launches `medweave-pretrain trainer=ddp` instead (the default next-event backbone
of configs/pretrain.yaml, windows of a registry cohort, batch = windows per rank) and adds tokens
per second (real events, padding not counted) and tokens per CPU-second of each rank's process
(less sensitive to a busy machine: on a shared one, a rank that waits for a core does not count
the wait). ``--rounds`` alternates 1 and 2 processes that many times.
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

import lightning as L


class StepTimer(L.Callback):
    """Batch-end to batch-end wall and CPU times on this rank, and the real tokens of each
    pretraining batch, written to ``<out>.rank<N>.json`` when fit ends."""

    def __init__(self, out: str):
        self.out, self.times, self.cpu, self.tokens, self._last = out, [], [], [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now, cpu = time.perf_counter(), time.process_time()
        if self._last is not None:
            self.times.append(now - self._last[0])
            self.cpu.append(cpu - self._last[1])
            if isinstance(batch, dict) and "codes" in batch:  # a pretraining batch
                self.tokens.append(int((batch["codes"] != 0).sum()))
        self._last = now, cpu

    def on_train_end(self, trainer, *args):
        record = {"times": self.times, "cpu": self.cpu, "tokens": self.tokens}
        Path(f"{self.out}.rank{trainer.global_rank}.json").write_text(json.dumps(record))


def launch(root: Path, work: Path, world: int, batch: int, steps: int, warmup: int, smoke: bool,
           callbacks: str = "preemption", pretrain: bool = False, tag: str = "") -> dict:  # fmt: skip
    out = work / f"world{world}-{callbacks}{tag}"
    common = [
        f"data.root={root}", f"paths.log_dir={work / 'logs'}", f"hydra.run.dir={out}",
        "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={world}",
        "trainer.max_epochs=-1", f"++trainer.max_steps={warmup + steps + 1}",
        "++trainer.limit_train_batches=null", "++trainer.limit_val_batches=0",
        "++trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
        f"data.batch_size={batch}", f"callbacks={callbacks}",
        "+callbacks.timer._target_=ddp_weak_scaling.StepTimer",
        f"+callbacks.timer.out={out}", "logger=csv",
    ]  # fmt: skip
    if pretrain:
        model = ["debug=pretrain_smoke"] if smoke else []
        command = [sys.executable, "-m", "medweave.cli.pretrain", *model, *common]
    else:
        model = "debug=smoke" if smoke else "experiment=quickstart"
        command = [sys.executable, "-m", "medweave.cli.train", model, *common]
        command += ["test=false", "evaluation.enabled=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"world={world} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(world)]
    result = {
        "median_step_s": max(statistics.median(r["times"][warmup:]) for r in ranks),
        "steps_per_rank": len(ranks[0]["times"][warmup:]),
    }
    if pretrain:
        tokens = sum(sum(r["tokens"][warmup:]) for r in ranks)
        result["tokens_per_step"] = tokens / result["steps_per_rank"]  # all ranks together
        result["tokens_per_s"] = result["tokens_per_step"] / result["median_step_s"]
        result["tokens_per_cpu_s"] = tokens / sum(sum(r["cpu"][warmup:]) for r in ranks)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="subjects (windows) per batch on each rank")
    parser.add_argument("--smoke", action="store_true", help="debug=smoke (pretrain_smoke) model instead")
    parser.add_argument("--pretrain", action="store_true", help="medweave-pretrain instead of medweave-train")
    parser.add_argument("--root", type=Path, help="a cohort; default: a sandbox of --subjects")
    parser.add_argument("--rounds", type=int, default=1, help="alternate 1 and 2 processes this often")
    args = parser.parse_args()

    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = args.root or generate_cohort(
            work / "cohort", SandboxConfig(n_subjects=args.subjects, registry_history=args.pretrain, seed=0)
        )
        run = dict(root=root, work=work, batch=args.batch, steps=args.steps, warmup=args.warmup,
                   smoke=args.smoke, pretrain=args.pretrain)  # fmt: skip
        sides = {1: [], 2: []}
        for k in range(args.rounds):
            for world in (1, 2):
                sides[world].append(launch(world=world, tag=f"-{k}", **run))
                load.append(os.getloadavg()[0])
        # The same 2-process launch without the Preemption callback (its flag all-reduce before
        # every batch): what that check costs, measured in this run.
        bare = launch(world=2, callbacks="none", **run)
    one, two = ({key: statistics.median(r[key] for r in sides[w]) for key in sides[w][0]} for w in (1, 2))
    batch = args.batch
    result = {
        "benchmark": "ddp_weak_scaling",
        "command": "medweave-pretrain" if args.pretrain else "medweave-train",
        "model": ("debug=pretrain_smoke" if args.pretrain else "debug=smoke")
        if args.smoke
        else ("configs/pretrain.yaml" if args.pretrain else "experiment=quickstart"),
        "cohort": str(args.root) if args.root else f"sandbox of {args.subjects}",
        "batch_per_rank": batch,
        "rounds": args.rounds,
        "median_step_s": {"1_process": one["median_step_s"], "2_processes": two["median_step_s"]},
        "samples_per_s": {
            "1_process": batch / one["median_step_s"],
            "2_processes": 2 * batch / two["median_step_s"],
        },
        "weak_scaling_efficiency": one["median_step_s"] / two["median_step_s"],
        "two_processes_without_preemption_step_s": bare["median_step_s"],
        "preemption_check_cost": two["median_step_s"] / bare["median_step_s"] - 1,
        "timed_steps_per_rank": one["steps_per_rank"],
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, OMP_NUM_THREADS=1 per rank, gloo",
        "load_average_1min": {"min": min(load), "max": max(load)},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if args.pretrain:
        for key in ("tokens_per_s", "tokens_per_cpu_s"):
            result[key] = {"1_process": one[key], "2_processes": two[key]}
        result["tokens_weak_scaling_efficiency"] = two["tokens_per_s"] / (2 * one["tokens_per_s"])
        result["tokens_per_cpu_s_ratio"] = two["tokens_per_cpu_s"] / one["tokens_per_cpu_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
