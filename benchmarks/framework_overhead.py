"""Framework overhead: medweave's training step and validation batch against plain PyTorch loops.

medweave is Lightning + the Hydra config + MLflow logging at its default frequency + the
torchmetrics updates; the plain loops run the same model on the same batches.

    python benchmarks/framework_overhead.py                 # quickstart model, 1,000 subjects
    python benchmarks/framework_overhead.py --steps 3 --subjects 60 --smoke   # seconds, a check

Training: both sides time the optimizer step only (forward, backward, clipping, step, and for
medweave its metric updates and logging), not data loading, so the ratio is what the framework
adds per step.

Evaluation: medweave is one ``trainer.validate`` call with the MultimodalModule (forward, loss,
the torchmetrics updates of ``validation_step``, and every callback's batch hooks, progress bar
included) over the tuning split's batches, pass after pass, as one loader.
The plain side is a ``torch.no_grad()`` loop over the same batches with the same model in eval
mode: forward, loss summed for a mean, scores and targets kept for the metrics at the end. Both
time a batch from its arrival to the end of its hooks, not data loading and not the once-per-pass
work (metric compute, MLflow writes).

On a noisy machine (a shared 2-core VM drifts by 5-10 % between blocks of steps) the sides
alternate in --rounds rounds: plain, medweave, plain, medweave, ..., plain, each block --steps
steps after its own warm-up. Three ratios are reported:
- ratio of the medians of all timed steps (plain: every plain block);
- the median over rounds of (medweave block median / mean of the plain blocks around it), which
  cancels slow drift;
- ratio of the 10th percentiles: noise from other tenants only ever adds time, so a low
  percentile estimates what each side costs by itself (timeit's reasoning for the minimum).
Prints one JSON line.
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


def train_batches(datamodule):
    """The train loader's batches epoch after epoch, each epoch in its own order, as Lightning
    feeds them (set_epoch): both sides then train on the same batches, of the same widths."""
    epoch = 0
    while True:
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def plain_loop(cfg, datamodule, steps: int, warmup: int) -> list[float]:
    import torch
    from hydra.utils import instantiate

    from medweave.models.build import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, datamodule.modalities, datamodule.encoder_inputs()).train()
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
    times, batches = [], train_batches(datamodule)
    for _ in range(warmup + steps):
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


def val_loader(datamodule, n: int):
    """n batches of the tuning split, pass after pass, as one loader: one validate() call then
    covers every timed batch, as one long epoch would. (Calling validate() once per short pass
    would put an epoch's end, with its metric compute and MLflow write, every few batches.)"""
    from torch.utils.data import DataLoader

    from medweave.data.contract import TUNING_SPLIT
    from medweave.data.datamodule import SplitDataset

    dataset = SplitDataset(datamodule.cohort, TUNING_SPLIT)
    size = datamodule.batch_size
    one_pass = [list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)]
    batches = [one_pass[k % len(one_pass)] for k in range(n)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=_same)


def _same(batch):
    return batch  # SplitDataset.__getitems__ returns whole batches


def plain_eval(model, datamodule, steps: int, warmup: int) -> list[float]:
    import torch

    model.eval()
    times, scores, targets = [], [], []
    total, seen = torch.zeros(()), 0
    with torch.no_grad():
        for batch in val_loader(datamodule, warmup + steps):
            start = time.perf_counter()
            outputs = model(batch)
            size = len(batch["targets"])
            total += model.head.loss(outputs, batch) * size
            seen += size
            scores.append(model.head.score(outputs))
            targets.append(batch["targets"])
            times.append(time.perf_counter() - start)
    return times[warmup:]


def medweave_eval(cfg, model, datamodule, steps: int, warmup: int) -> list[float]:
    import lightning as L
    from hydra.utils import instantiate

    class Start(L.Callback):  # the first callback: starts the clock before every batch hook
        def __init__(self):
            self.start = 0.0

        def on_validation_batch_start(self, *args):
            self.start = time.perf_counter()

    class End(L.Callback):  # the last: stops it after them all (progress bar included)
        def __init__(self, start: Start):
            self.begin, self.times = start, []

        def on_validation_batch_end(self, *args):
            self.times.append(time.perf_counter() - self.begin.start)

    start = Start()
    end = End(start)
    loggers = [instantiate(c) for c in cfg.logger.values()]
    trainer = instantiate(
        cfg.trainer,
        logger=loggers,
        callbacks=[start, end],
        limit_val_batches=None,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.callbacks.remove(end)
    trainer.callbacks.append(end)
    trainer.validate(model, dataloaders=val_loader(datamodule, warmup + steps), verbose=False)
    return end.times[warmup : warmup + steps]


def eval_model(cfg, datamodule):
    import torch

    from medweave.models.build import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, datamodule.modalities, datamodule.encoder_inputs())


def alternate(plain, framework, rounds: int) -> dict:
    """Plain and medweave blocks in turn (plain first and last); their step times and ratios."""
    plains, frameworks = [plain()], []
    for _ in range(rounds):
        frameworks.append(framework())
        plains.append(plain())
    med = statistics.median
    per_round = [
        med(f) / ((med(a) + med(b)) / 2) for f, a, b in zip(frameworks, plains[:-1], plains[1:], strict=True)
    ]
    every_plain = [t for block in plains for t in block]
    every_framework = [t for block in frameworks for t in block]

    def p10(times):
        return statistics.quantiles(times, n=10)[0] if len(times) > 1 else times[0]

    return {
        "plain_block_medians_s": [med(b) for b in plains],
        "medweave_block_medians_s": [med(b) for b in frameworks],
        "ratio_of_medians": med(every_framework) / med(every_plain),
        "ratio_per_round": per_round,
        "median_ratio_over_rounds": med(per_round),
        "ratio_of_p10": p10(every_framework) / p10(every_plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--eval-steps", type=int, help="timed validation batches (default: --steps)")
    parser.add_argument("--eval-warmup", type=int, help="warm-up validation batches (default: --warmup)")
    parser.add_argument("--smoke", action="store_true", help="debug=smoke model instead of quickstart")
    parser.add_argument("--rounds", type=int, default=3, help="medweave blocks, each between two plain ones")
    args = parser.parse_args()
    eval_steps = args.steps if args.eval_steps is None else args.eval_steps
    eval_warmup = args.warmup if args.eval_warmup is None else args.eval_warmup

    import torch
    from hydra.utils import instantiate

    from medweave.data.contract import TUNING_SPLIT
    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = generate_cohort(work / "cohort", SandboxConfig(n_subjects=args.subjects, seed=0))
        cfg = compose_config(root, work, args.smoke)
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        train = alternate(
            lambda: plain_loop(cfg, datamodule, args.steps, args.warmup),
            lambda: medweave_loop(cfg, datamodule, args.steps, args.warmup),
            args.rounds,
        )
        model = eval_model(cfg, datamodule)
        evaluation = alternate(
            lambda: plain_eval(model, datamodule, eval_steps, eval_warmup),
            lambda: medweave_eval(cfg, model, datamodule, eval_steps, eval_warmup),
            args.rounds,
        )
        val_subjects = len(datamodule.cohort.rows(TUNING_SPLIT))

    result = {
        "benchmark": "framework_overhead",
        "model": "debug=smoke" if args.smoke else "experiment=quickstart",
        "subjects": args.subjects,
        "steps": args.steps,
        "rounds": args.rounds,
        "train": train,
        "ratio_medweave_to_plain": train["ratio_of_medians"],
        "eval_batches": eval_steps,
        "val_subjects": val_subjects,
        "eval": evaluation,
        "ratio_eval_medweave_to_plain": evaluation["ratio_of_medians"],
        "target": "<= 1.03",
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
