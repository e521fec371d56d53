"""Pretraining throughput on CPU: tokens per second of a medweave-pretrain training step.

    python benchmarks/pretrain_throughput.py --root /work/bench-sp/r10000       # a registry cohort
    python benchmarks/pretrain_throughput.py --subjects 300 --steps 5            # seconds, a check
    python benchmarks/pretrain_throughput.py --root ... --before --compile       # the sides below
    python benchmarks/pretrain_throughput.py --root ... --profile 5              # where a step goes

Builds the token store (data/ehr/pretrain.py) and times whole optimizer steps (batch read from
the store, forward, backward, AdamW) of the default backbone and objective from
configs/pretrain.yaml, both objectives side by side in alternating rounds (the machine is
noisy). ``--before`` adds the next-event step as it was until 2026-12-04 (nn.MultiheadAttention's
path, float causal + padding masks merged: before_encode below, the same math), ``--compile`` one
with
the backbone under torch.compile. Tokens are real events, not padding. Prints one JSON line with
wall and CPU time and the load average, so the figures can be judged; ``--profile N`` first
prints torch.profiler's table of N steps of each side (to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def before_encode(self, x, padding):
    """EventTransformer.encode as it was until 2026-12-04: a float causal mask beside a float
    padding mask, which nn.MultiheadAttention merges into one [B, heads, L, L] float mask, so SDPA
    runs its math kernel. The same function of every real token as the current encode."""
    import torch

    padding = padding.clone()
    padding[:, 0] &= ~padding.all(1)
    n = x.shape[1]
    mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu(1)
    padding = torch.zeros(padding.shape, device=x.device, dtype=x.dtype).masked_fill(padding, float("-inf"))
    return self.norm(self.transformer(x, mask=mask, src_key_padding_mask=padding, is_causal=True))


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


def profile(module, loader, optimizer, steps: int) -> None:
    """torch.profiler's table of ``steps`` whole steps (after one untimed), by self CPU time."""
    from torch.profiler import ProfilerActivity, profile, record_function

    time_steps(module, loader, 0, 1, optimizer)  # untimed: first-call costs
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("steps"):
            time_steps(module, loader, steps, 0, optimizer)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, help="a cohort; default: a registry sandbox of --subjects")
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="keep the token store here (default: a temporary folder)")
    parser.add_argument("--objectives", default="next_event,masked")
    parser.add_argument("--before", action="store_true", help="add the next-event step before the fused path")
    parser.add_argument("--compile", action="store_true", help="add the next-event step, backbone compiled")
    parser.add_argument("--profile", type=int, default=0, help="profile this many next-event steps first")
    args = parser.parse_args()

    import torch

    work = args.cache or Path(tempfile.mkdtemp(prefix="pretrain-bench-"))
    root = args.root
    if root is None:
        from medweave.sandbox.generate import SandboxConfig, generate_cohort

        root = generate_cohort(
            work / "cohort", SandboxConfig(n_subjects=args.subjects, registry_history=True, seed=0)
        )
    import types

    from medweave.models.encoders.ehr_codes import SDPAEncoderLayer

    kinds = args.objectives.split(",")
    kinds += ["next_event_before"] * args.before + ["next_event_compiled"] * args.compile
    sides = {}
    for kind in kinds:
        module, loader = make_module(root, work, kind.split("_before")[0].split("_compiled")[0], args)
        if kind.endswith("_before"):
            module.backbone.encode = types.MethodType(before_encode, module.backbone)
            for layer in module.backbone.transformer.layers:  # MultiheadAttention's own path
                layer._sa_block = types.MethodType(SDPAEncoderLayer._sa_block, layer)
        if kind.endswith("_compiled"):
            module.backbone.compile()
        sides[kind] = (module, loader, torch.optim.AdamW(module.parameters(), lr=1e-3))
    for kind in kinds if args.profile else ():
        print(f"--- {kind}", file=sys.stderr)
        profile(*sides[kind], args.profile)
    if args.compile:  # compile outside the timed rounds (the first steps compile: once, minutes)
        start = time.perf_counter()
        module, loader, optimizer = sides["next_event_compiled"]
        time_steps(module, loader, 0, 2, optimizer)
        compile_s = time.perf_counter() - start
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
    if args.compile:
        out["compile_first_2_steps_s"] = round(compile_s, 1)
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
