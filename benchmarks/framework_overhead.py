"""Framework overhead: medweave's training step (Lightning + Hydra config + MLflow logging at its
default frequency + torchmetrics) against a plain PyTorch loop on the same model and batches.

    python benchmarks/framework_overhead.py                 # quickstart model, 1,000 subjects
    python benchmarks/framework_overhead.py --steps 3 --subjects 60 --smoke   # seconds, a check

Both sides time the optimizer step only (forward, backward, clipping, step, and for medweave its
metric updates and logging), not data loading, so the ratio is what the framework adds per step.
The plain loop runs before and after medweave, and the ratio uses their mean, to show drift on a
noisy machine. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def compose_config(root: Path, work: Path, smoke: bool):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from medweave.cli.hydra_main import config_dir

    overrides = [
        "debug=smoke" if smoke else "experiment=quickstart",
        f"data.root={root}",
        f"paths.log_dir={work / 'logs'}",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
    return cfg


def plain_loop(cfg, datamodule, steps: int, warmup: int) -> list[float]:
    import torch
    from hydra.utils import instantiate

    from medweave.models.build import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, datamodule.modalities, datamodule.encoder_inputs()).train()
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
    times, batches = [], iter(datamodule.train_dataloader())
    for _ in range(warmup + steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(datamodule.train_dataloader())
            batch = next(batches)
        start = time.perf_counter()
        loss = model.head.loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def medweave_loop(cfg, datamodule, steps: int, warmup: int) -> list[float]:
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from medweave.models.build import build_model

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_train_batch_start(self, *args):
            self._start = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self._start)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, datamodule.modalities, datamodule.encoder_inputs())
    timer = StepTimer()
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer = instantiate(
        cfg.trainer,
        logger=loggers,
        callbacks=[timer],
        max_epochs=-1,
        max_steps=warmup + steps,
        limit_val_batches=0,
        enable_checkpointing=False,
        limit_train_batches=None,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="debug=smoke model instead of quickstart")
    args = parser.parse_args()

    import torch
    from hydra.utils import instantiate

    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = generate_cohort(work / "cohort", SandboxConfig(n_subjects=args.subjects, seed=0))
        cfg = compose_config(root, work, args.smoke)
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        before = plain_loop(cfg, datamodule, args.steps, args.warmup)
        framework = medweave_loop(cfg, datamodule, args.steps, args.warmup)
        after = plain_loop(cfg, datamodule, args.steps, args.warmup)

    plain = (statistics.median(before) + statistics.median(after)) / 2
    result = {
        "benchmark": "framework_overhead",
        "model": "debug=smoke" if args.smoke else "experiment=quickstart",
        "subjects": args.subjects,
        "steps": args.steps,
        "median_step_s": {
            "plain_before": statistics.median(before),
            "medweave": statistics.median(framework),
            "plain_after": statistics.median(after),
        },
        "ratio_medweave_to_plain": statistics.median(framework) / plain,
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
