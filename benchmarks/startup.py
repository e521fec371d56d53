"""Start-up: how long the command-line tools take before they do anything, and which heavy
libraries a training process has imported by its first step.

    python benchmarks/startup.py                       # 5 runs each, a 200-subject sandbox cohort
    python benchmarks/startup.py --repeats 2 --subjects 60   # quicker, a check

Measured, each as a subprocess of the installed console scripts, best of --repeats:
- `medweave-train --help` and `medweave-validate data.root=/nonexistent` (wall time of the process);
- `medweave-train debug=smoke`: from the launch of the process to the first on_train_batch_start,
  recorded by the FirstStep callback below (`+callbacks.first._target_=startup.FirstStep`,
  importable through PYTHONPATH=benchmarks), with two marks on the way: the callback's construction
  (the config composed, the CLI's imports done: train() builds its callbacks first) and fit's start
  (the cohort prepared, the model, logger and trainer built; Lightning's sanity validation runs
  after it). The first launch builds the cohort cache and creates the embedded MLflow store (cold);
  the later ones reuse both (warm), as a user's second run does. Each launch ends after one step
  (trainer.max_steps=1, no early stopping, test or evaluation).
- Which heavy libraries are in sys.modules at the first step, for all four modalities and for
  `data.modalities=[ehr_codes]` only: a rank should pay the import cost only for what its config uses.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import lightning as L

HEAVY = (
    "torch",
    "lightning",
    "torchmetrics",
    "mlflow",
    "sqlalchemy",
    "monai",
    "transformers",
    "tokenizers",
    "pydicom",
    "nibabel",
    "pysam",
    "sklearn",
    "sksurv",
    "scipy",
    "pandas",
    "pyarrow",
    "optuna",
    "matplotlib",
)


class FirstStep(L.Callback):
    """Writes, at the first training batch, the epoch times (time.time()) of this callback's
    construction, of fit's start and of the first batch, and which of HEAVY are imported."""

    def __init__(self, out: str):
        self.out, self.built, self.fit_start, self.done = out, time.time(), None, False

    def on_fit_start(self, trainer, pl_module):
        self.fit_start = time.time()

    def on_train_batch_start(self, trainer, *args):
        if self.done:
            return
        now, self.done = time.time(), True
        record = {
            "callback_built": self.built,
            "fit_start": self.fit_start,
            "first_step": now,
            "modules": sorted(m for m in HEAVY if m in sys.modules),
        }
        Path(self.out).write_text(json.dumps(record))


def script(name: str) -> list[str]:
    """The installed console script beside this Python, else the module (a checkout without install)."""
    installed = Path(sys.executable).parent / name
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", f"medweave.cli.{name.removeprefix('medweave-')}"]


def environment() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))}
    return env | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def wall_times(command: list[str], repeats: int, cwd: Path, ok_codes: tuple[int, ...]) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode not in ok_codes:
            sys.exit(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return times


def first_step(root: Path, work: Path, run: str, extra: list[str]) -> dict:
    out = work / f"{run}.json"
    command = script("medweave-train") + [
        "debug=smoke",
        f"data.root={root}",
        f"paths.log_dir={work / 'logs'}",
        f"hydra.run.dir={work / run}",
        "++trainer.max_steps=1",
        "~callbacks.early_stopping",  # one step ends fit before any validation it could watch
        "trainer.enable_progress_bar=false",
        "test=false",
        "evaluation.enabled=false",
        "+callbacks.first._target_=startup.FirstStep",
        f"+callbacks.first.out={out}",
        *extra,
    ]
    launched = time.time()
    proc = subprocess.run(command, cwd=work, env=environment(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{run} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(out.read_text())
    return {
        "to_first_step_s": record["first_step"] - launched,
        "to_config_and_imports_s": record["callback_built"] - launched,
        "to_fit_start_s": record["fit_start"] - launched,
        "modules": record["modules"],
    }


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["to_first_step_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command; the best is kept")
    parser.add_argument("--subjects", type=int, default=200, help="sandbox cohort for the training runs")
    args = parser.parse_args()

    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        help_s = wall_times(script("medweave-train") + ["--help"], args.repeats, work, (0,))
        validate_s = wall_times(
            script("medweave-validate") + ["data.root=/nonexistent"], args.repeats, work, (1,)
        )
        root = generate_cohort(work / "cohort", SandboxConfig(n_subjects=args.subjects, seed=0))
        runs = [first_step(root, work, f"all{i}", []) for i in range(args.repeats)]
        ehr = [
            first_step(root, work, f"ehr{i}", ["data.modalities=[ehr_codes]"]) for i in range(args.repeats)
        ]

    def summary(values: list[float]) -> dict:
        return {"best_s": min(values), "runs_s": [round(v, 3) for v in values]}

    result = {
        "benchmark": "startup",
        "repeats": args.repeats,
        "subjects": args.subjects,
        "medweave_train_help": summary(help_s),
        "medweave_validate_nonexistent": summary(validate_s),
        "first_step_smoke": {
            "cold_cache": runs[0],
            "warm_cache_best": best(runs[1:]) if len(runs) > 1 else None,
            "to_first_step_runs_s": [round(r["to_first_step_s"], 3) for r in runs],
        },
        "first_step_smoke_ehr_codes_only": {
            "cold_cache": ehr[0],
            "warm_cache_best": best(ehr[1:]) if len(ehr) > 1 else None,
            "to_first_step_runs_s": [round(r["to_first_step_s"], 3) for r in ehr],
        },
        "heavy_modules_at_first_step": {"all_modalities": runs[0]["modules"], "ehr_codes": ehr[0]["modules"]},
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
