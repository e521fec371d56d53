"""DDP weak scaling on CPU: the same per-rank batch on 1 and on 2 processes (gloo, one thread each).

    python benchmarks/ddp_weak_scaling.py                    # quickstart model, 2,000 subjects
    python benchmarks/ddp_weak_scaling.py --smoke --steps 3 --subjects 120   # seconds, a check

Each side is a real `medweave-train trainer=ddp` launch (Lightning starts the ranks, the Preemption
callback checks for a signal before every batch, no validation or checkpoints), with
OMP_NUM_THREADS=1 per rank so that two ranks use the two cores this machine has. A step is timed
from one batch's end to the next (data loading, forward, backward, the gradient all-reduce and
the optimizer), on every rank; a launch's step time is the slowest rank's median. Weak-scaling
efficiency = step time on 1 process / step time on 2 processes (1.0 = perfect: twice the samples
per second). A third launch, 2 processes with callbacks=none, gives what the Preemption
callback's per-batch check costs. Prints one JSON line.
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
    """Batch-end to batch-end times on this rank, written to ``<out>.rank<N>.json`` when fit ends."""

    def __init__(self, out: str):
        self.out, self.times, self._last = out, [], None

    def on_train_batch_end(self, trainer, *args):
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now

    def on_train_end(self, trainer, *args):
        Path(f"{self.out}.rank{trainer.global_rank}.json").write_text(json.dumps(self.times))


def launch(root: Path, work: Path, world: int, batch: int, steps: int, warmup: int, smoke: bool,
           callbacks: str = "preemption") -> dict:  # fmt: skip
    out = work / f"world{world}-{callbacks}"
    command = [
        sys.executable, "-m", "medweave.cli.train",
        "debug=smoke" if smoke else "experiment=quickstart",
        f"data.root={root}", f"paths.log_dir={work / 'logs'}", f"hydra.run.dir={out}",
        "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={world}",
        "trainer.max_epochs=-1", f"++trainer.max_steps={warmup + steps + 1}",
        "++trainer.limit_train_batches=null", "++trainer.limit_val_batches=0",
        "++trainer.enable_checkpointing=false", "trainer.enable_progress_bar=false",
        f"data.batch_size={batch}", f"callbacks={callbacks}",
        "+callbacks.timer._target_=ddp_weak_scaling.StepTimer",
        f"+callbacks.timer.out={out}", "logger=csv", "test=false", "evaluation.enabled=false",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"world={world} failed:\n{proc.stderr[-3000:]}")
    per_rank = [json.loads(Path(f"{out}.rank{r}.json").read_text())[warmup:] for r in range(world)]
    return {"median_step_s": max(statistics.median(t) for t in per_rank), "steps_per_rank": len(per_rank[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="subjects per batch on each rank")
    parser.add_argument("--smoke", action="store_true", help="debug=smoke model instead of quickstart")
    args = parser.parse_args()

    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = generate_cohort(work / "cohort", SandboxConfig(n_subjects=args.subjects, seed=0))
        one = launch(root, work, 1, args.batch, args.steps, args.warmup, args.smoke)
        two = launch(root, work, 2, args.batch, args.steps, args.warmup, args.smoke)
        # The same 2-process launch without the Preemption callback (its flag all-reduce before
        # every batch): what that check costs, measured in this run.
        bare = launch(root, work, 2, args.batch, args.steps, args.warmup, args.smoke, callbacks="none")
    batch = args.batch
    result = {
        "benchmark": "ddp_weak_scaling",
        "model": "debug=smoke" if args.smoke else "experiment=quickstart",
        "subjects": args.subjects,
        "batch_per_rank": batch,
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
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
