"""DP-SGD (privacy=dp) against plain training on the quickstart model, and a DP run under DDP that
is preempted and resumed against one that is not.

    python benchmarks/dp_sgd.py                               # 800-subject sandbox, 5 epochs
    python benchmarks/dp_sgd.py --subjects 300 --epochs 2 --skip-ddp   # a check

1. Cost: medweave-train experiment=quickstart (all four modalities, attention fusion) in a child
   process, plain and with privacy=dp (target epsilon ``--epsilon``), on the same sandbox cohort,
   one after the other. Time per epoch: the median gap between the per-epoch log lines after the
   first epoch (training and validation). Test AUROC: trainer.test's test/auroc over the held-out
   split, from the run's MLflow store; epsilon spent: the last privacy/epsilon.
2. Step cost, in this process: the quickstart model built plain and built for DP (GroupNorm,
   per-subject gradient hooks, Opacus's DPOptimizer around the same AdamW), each stepping on the
   same fixed batch of ``data.batch_size`` training subjects (forward, loss, backward, optimizer;
   no data loading), the two taking turns step by step so that a noisy machine slows both alike.
   Median of ``--steps`` steps after two warm-up steps each.
3. Exact resume under DDP (``trainer=ddp trainer.devices=2 trainer.accelerator=cpu``): the same DP
   quickstart, once unbroken and once sent SIGUSR1 (as Slurm does before preempting) as soon as its
   first epoch's checkpoint exists, then launched again with the same command. Compares the final
   checkpoints (weights, accountant, noise generator) and the privacy/epsilon history.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].* - epoch (\d+)/\d+ ")


def epoch_seconds(log: Path) -> list[float]:
    """Gaps between consecutive per-epoch lines (the first epoch, with its warm-up, left out)."""
    stamps = [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in log.read_text().splitlines()
        if (m := STAMP.match(line))
    ]
    return [round(b - a, 2) for a, b in zip(stamps, stamps[1:], strict=False)]


def mlflow_metrics(log_dir: Path) -> tuple[dict, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(log_dir / 'mlflow' / 'mlflow.db').resolve()}")
    [run] = client.search_runs([client.get_experiment_by_name("medweave").experiment_id])
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "privacy/epsilon")]
    return run.data.metrics, history


def train(overrides: list[str], log_dir: Path, run_dir: Path, env: dict, signal_after_epoch: bool = False):
    command = [
        str(Path(sys.executable).parent / "medweave-train"),
        "experiment=quickstart",
        f"paths.log_dir={log_dir}",
        f"data.cache_dir={run_dir.parent.parent.parent / 'cache'}",  # one prepared cohort for all runs
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = (run_dir.parent / f"{run_dir.name}.out").open("a")
    child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if signal_after_epoch:
        while not (run_dir / "checkpoints" / "last.ckpt").is_file() and child.poll() is None:
            time.sleep(0.2)
        child.send_signal(signal.SIGUSR1)
    return child.wait()


def privacy_state(checkpoint: Path) -> tuple[dict, dict]:
    import torch

    saved = torch.load(checkpoint, weights_only=False, map_location="cpu")
    [state] = [v for k, v in saved["callbacks"].items() if k.startswith("DifferentialPrivacy")]
    return saved, state


def cost(cohort: Path, work: Path, epochs: int, epsilon: float, env: dict) -> dict:
    out = {}
    common = [f"data.root={cohort}", f"trainer.max_epochs={epochs}", "evaluation.enabled=false"]
    for name, extra in [("plain", []), ("dp", ["privacy=dp", f"privacy.target_epsilon={epsilon}"])]:
        start = time.perf_counter()
        code = train(common + extra, work / f"logs_{name}", work / f"run_{name}", env)
        if code != 0:
            raise SystemExit(f"{name} run failed ({code}): see {work / f'run_{name}.out'}")
        metrics, history = mlflow_metrics(work / f"logs_{name}")
        gaps = epoch_seconds(work / f"run_{name}" / "quickstart.log")
        out[name] = {
            "test_auroc": round(metrics["test/auroc"], 4),
            "epoch_s_median": statistics.median(gaps),
            "epoch_s": gaps,
            "wall_s": round(time.perf_counter() - start, 1),
            **(
                {"epsilon": round(history[-1][1], 4), "epsilon_per_epoch": [round(v, 3) for _, v in history]}
                if history
                else {}
            ),
        }
    out["epoch_time_ratio_dp_over_plain"] = round(
        out["dp"]["epoch_s_median"] / out["plain"]["epoch_s_median"], 2
    )
    return out


def step_cost(cohort: Path, work: Path, steps: int) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from opacus.optimizers import DPOptimizer

    from medweave.cli.hydra_main import config_dir
    from medweave.models.build import build_model
    from medweave.training.dp_modules import prepare_model

    base = [
        "experiment=quickstart",
        f"data.root={cohort}",
        f"paths.log_dir={work}",
        f"data.cache_dir={work.parent.parent / 'cache'}",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        plain_cfg = compose("train", overrides=base)
        dp_cfg = compose("train", overrides=[*base, "privacy=dp"])
    datamodule = instantiate(plain_cfg.data)
    inputs, heads = datamodule.encoder_inputs(), datamodule.head_inputs()
    torch.manual_seed(0)
    plain = build_model(plain_cfg.model, datamodule.modalities, inputs, head_inputs=heads).train()
    private = build_model(dp_cfg.model, datamodule.modalities, inputs, head_inputs=heads).train()
    prepare_model(private)
    optimizers = {
        "plain": plain.optimizer_factory(params=plain.parameters()),
        "dp": DPOptimizer(
            private.optimizer_factory(params=private.parameters()),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=plain_cfg.data.batch_size,
        ),
    }
    models = {"plain": plain, "dp": private}
    batch = datamodule.cohort.batch(datamodule.cohort.rows("train")[: plain_cfg.data.batch_size])
    times = {"plain": [], "dp": []}
    for i in range(steps + 2):
        for name in ("plain", "dp") if i % 2 == 0 else ("dp", "plain"):
            start = time.perf_counter()
            optimizers[name].zero_grad()
            models[name].head.loss(models[name](batch), batch).backward()
            optimizers[name].step()
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    plain_s, dp_s = statistics.median(times["plain"]), statistics.median(times["dp"])
    return {
        "batch": plain_cfg.data.batch_size,
        "step_s_plain": round(plain_s, 4),
        "step_s_dp": round(dp_s, 4),
        "step_time_ratio_dp_over_plain": round(dp_s / plain_s, 2),
    }


def ddp_resume(cohort: Path, work: Path, epochs: int, epsilon: float, env: dict) -> dict:
    import torch

    overrides = [
        f"data.root={cohort}",
        f"trainer.max_epochs={epochs}",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "privacy=dp",
        f"privacy.target_epsilon={epsilon}",
        "privacy.noise_seed=11",  # both runs draw the same noise, so that their weights can be compared
        "evaluation.enabled=false",
        "callbacks.early_stopping.patience=100",
    ]
    env = {**env, "OMP_NUM_THREADS": "1"}
    assert train(overrides, work / "logs_unbroken", work / "run_unbroken", env) == 0
    first = train(overrides, work / "logs_broken", work / "run_broken", env, signal_after_epoch=True)
    stopped_at = privacy_state(work / "run_broken" / "checkpoints" / "last.ckpt")[0]["global_step"]
    second = train(overrides, work / "logs_broken", work / "run_broken", env)
    a, state_a = privacy_state(work / "run_unbroken" / "checkpoints" / "last.ckpt")
    b, state_b = privacy_state(work / "run_broken" / "checkpoints" / "last.ckpt")
    _, history_a = mlflow_metrics(work / "logs_unbroken")
    _, history_b = mlflow_metrics(work / "logs_broken")
    return {
        "first_launch_exit": first,  # 75: preempted, checkpoint written
        "preempted_at_step": stopped_at,
        "second_launch_exit": second,
        "steps": b["global_step"],
        "epsilon_unbroken": state_a["epsilon"],
        "epsilon_resumed": state_b["epsilon"],
        "target_epsilon": epsilon,
        "accountant_equal": state_a["accountant"] == state_b["accountant"],
        "weights_equal": all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items()),
        "epsilon_history_equal": history_a == history_b,
        "epsilon_history": [round(v, 4) for _, v in history_b],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--ddp-epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="step-cost steps per variant")
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--only-steps", action="store_true", help="only the step cost (part 2)")
    parser.add_argument("--work", type=Path, default=ROOT / "logs" / "bench_dp_sgd")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1")
    cohort = args.work / f"sandbox_{args.subjects}"
    if not (cohort / "metadata" / "dataset.json").exists():
        sandbox = Path(sys.executable).parent / "medweave-sandbox"
        subprocess.run(
            [sandbox, f"out={cohort}", f"n_subjects={args.subjects}", "seed=0"],
            check=True,
            capture_output=True,
        )
    work = args.work / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    work.mkdir(parents=True)
    result = {
        "benchmark": "dp_sgd",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "subjects": args.subjects,
        "epochs": args.epochs,
        "target_epsilon": args.epsilon,
    }
    if not args.only_steps:
        result.update(cost(cohort, work / "cost", args.epochs, args.epsilon, env))
    result["step_cost"] = step_cost(cohort, work / "steps", args.steps)
    if not args.skip_ddp and not args.only_steps:
        result["ddp_resume"] = ddp_resume(cohort, work / "ddp", args.ddp_epochs, args.epsilon, env)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
