"""Pretraining throughput on CPU: tokens per second of a medweave-pretrain training step.

    python benchmarks/pretrain_throughput.py --root /work/bench-sp/r10000       # a registry cohort
    python benchmarks/pretrain_throughput.py --subjects 300 --steps 5            # seconds, a check

Builds the token store (data/ehr/pretrain.py) and times whole optimizer steps (batch read from
the store, forward, backward, AdamW) of the default backbone and objective from
configs/pretrain.yaml, both objectives side by side in alternating rounds (the machine is
noisy). Tokens are real events, not padding. Prints one JSON line with wall and CPU time and the
load average, so the figures can be judged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def make_module(root: Path, cache: Path, objective: str, args):
    from tests.conftest import compose_run

    overrides = [
        f"data.root={root}",
        f"pretrain/objective={objective}",
        f"data.max_events={args.width}",
        f"data.batch_size={args.batch}",
        f"model.backbone.dim={args.dim}",
        f"model.backbone.n_layers={args.layers}",
    ]
    cfg = compose_run("pretrain", overrides, cache, cache / "run")
    from hydra.utils import instantiate

    from medweave.cli.pretrain import build_module

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    module = build_module(cfg, datamodule.vocab, datamodule.vocab["n_bins"])
    loader = datamodule.train_dataloader()
    return module, loader


def time_steps(module, loader, steps: int, warmup: int, optimizer) -> tuple[list[float], int, float]:
    """Wall time per timed step, real tokens and CPU seconds (user + sys) of the timed steps."""
    import torch

    times, tokens, cpu = [], 0, 0.0
    it = iter(loader)
    module.train()
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), os.times()
        batch = next(it)
        inputs, targets = module.objective.prepare(batch)
        loss, _ = module.objective.loss(module.backbone(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            tokens += int((batch["codes"] != 0).sum())
            now = os.times()
            cpu += (now.user - cpu_start.user) + (now.system - cpu_start.system)
    return times, tokens, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, help="a cohort; default: a registry sandbox of --subjects")
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="pretrain-bench-"))
    root = args.root
    if root is None:
        from medweave.sandbox.generate import SandboxConfig, generate_cohort

        root = generate_cohort(
            work / "cohort", SandboxConfig(n_subjects=args.subjects, registry_history=True, seed=0)
        )
    sides = {}
    for objective in ("next_event", "masked"):
        module, loader = make_module(root, work, objective, args)
        sides[objective] = (module, loader, torch.optim.AdamW(module.parameters(), lr=1e-3))
    results = {k: {"times": [], "tokens": 0, "cpu": 0.0} for k in sides}
    cpu0, wall0 = os.times(), time.perf_counter()
    for _ in range(args.rounds):
        for name, (module, loader, optimizer) in sides.items():
            times, tokens, cpu = time_steps(module, loader, args.steps, args.warmup, optimizer)
            results[name]["cpu"] += cpu
            results[name]["times"] += times
            results[name]["tokens"] += tokens
    cpu1, wall1 = os.times(), time.perf_counter()
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cohort": str(root),
        "model": {"dim": args.dim, "layers": args.layers, "width": args.width, "batch": args.batch},
        "params_backbone": sum(p.numel() for p in sides["next_event"][0].backbone.parameters()),
        "wall_s": round(wall1 - wall0, 1),
        "cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 1),
    }
    for name, r in results.items():
        out[name] = {
            "tokens_per_s": round(r["tokens"] / sum(r["times"]), 1),
            # per CPU-second of this process: less sensitive to a busy machine than per wall second
            "tokens_per_cpu_s": round(r["tokens"] / max(r["cpu"], 1e-9), 1),
            "median_step_s": round(statistics.median(r["times"]), 4),
            "steps": len(r["times"]),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
