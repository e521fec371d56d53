"""Fusion cost: the fused model's training step and its peak memory against its encoders' own.

The fused model is encoders + fusion + head; each encoder is also trained on its own, on the same
quickstart batch, and this for every fusion method in configs/model/fusion/.

    python benchmarks/fusion_cost.py                      # quickstart model, all six fusions
    python benchmarks/fusion_cost.py --smoke --subjects 60 --steps 2 --warmup 1 --fusions concat gated

A step is forward, loss, backward and the optimizer (the model's AdamW), with no data loading: one
fixed batch (the first ``data.batch_size`` training subjects, all four modalities) is reused. A
standalone variant is one encoder plus a linear layer on its embedding whose squared mean is the
loss: the encoder's own work and nothing else. ratio = fused step / sum of the four standalone
steps (1.0: fusion, head and the module's masking cost nothing). Times are medians of ``--steps``
steps after ``--warmup`` warm-up steps; the variants take turns step by step (the order rotating
each round), so that drift on a noisy machine falls on all of them alike.

Peak memory: each variant runs again in a fresh process, which builds it and loads the batch, does
a tiny autograd and AdamW step on a dummy tensor (the one-time start-up of both), and then records
its resident memory (baseline: libraries, weights, batch). On CPU it then resets the kernel's
peak-RSS counter (writing 5 to /proc/self/clear_refs sets VmHWM to the current VmRSS) and runs
``--memory-steps`` steps; step peak = VmHWM - baseline: activations, gradients, optimizer state,
and whatever the allocator keeps (what the machine has to provide). Where clear_refs cannot be
written, VmHWM is the peak since the process began (reported in "memory_method"). On CUDA it is
torch.cuda.max_memory_allocated() after reset_peak_memory_stats() minus memory_allocated()
before the steps. A fresh process per variant, because ru_maxrss cannot be reset and memory that
one variant gave back to the allocator would hide the next one's. The memory ratio = fused step
peak / sum of the standalone ones; it can fall below 1: the sum counts per-process costs (one-time
buffers, allocator slack) four times, and the fused backward frees one encoder's activations
before the next encoder's gradients are computed. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

MODALITIES = ["ehr_codes", "text", "image", "genomics"]


def fusion_methods() -> list[str]:
    """Every fusion config in configs/model/fusion/."""
    from medweave.cli.hydra_main import config_dir

    return sorted(p.stem for p in (config_dir() / "model/fusion").glob("*.yaml"))


def compose_config(root: Path, work: Path, smoke: bool, overrides: list[str] = ()):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from medweave.cli.hydra_main import config_dir

    base = [
        "debug=smoke" if smoke else "experiment=quickstart",
        f"data.root={root}",
        f"data.modalities=[{','.join(MODALITIES)}]",
        f"paths.log_dir={work / 'logs'}",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=base + list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(work / "run")
    return cfg


def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def to_device(batch, device: str):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if hasattr(batch, "to") else batch


def fixed_batch(datamodule, device: str) -> dict:
    """The first batch_size training subjects, as the data module serves them."""
    datamodule.setup()
    cohort = datamodule.cohort
    return to_device(cohort.batch(cohort.rows("train")[: datamodule.batch_size]), device)


def make_variant(cfg, datamodule, variant: str, device: str):
    """(module, loss(batch) -> scalar) for "fused" or "encoder:<modality>"."""
    import torch
    from hydra.utils import instantiate

    from medweave.models.build import build_model

    torch.manual_seed(cfg.seed)
    if variant == "fused":
        model = build_model(
            cfg.model,
            datamodule.modalities,
            datamodule.encoder_inputs(),
            head_inputs=datamodule.head_inputs(),
        )
        return model.to(device).train(), lambda batch: model.head.loss(model(batch), batch)
    modality = variant.split(":", 1)[1]
    encoder = instantiate(cfg.model.encoders[modality], **datamodule.encoder_inputs()[modality])
    module = torch.nn.ModuleDict({"encoder": encoder, "readout": torch.nn.Linear(encoder.out_dim, 1)})
    module = module.to(device).train()
    return module, lambda batch: module["readout"](module["encoder"](batch[modality])).square().mean()


def make_step(cfg, module, loss_fn, batch, device: str):
    """One training step (forward, backward, optimizer) on ``batch`` unless given another one,
    synchronised on CUDA."""
    import torch
    from hydra.utils import instantiate

    optimizer = instantiate(cfg.model.optimizer)(params=module.parameters())

    def step(other: dict | None = None) -> None:
        loss = loss_fn(batch if other is None else other)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def time_round_robin(steps_by_name: dict, steps: int, warmup: int) -> dict[str, list[float]]:
    """Per-step times for each variant; one step of each in turn, the order rotating every round."""
    names = list(steps_by_name)
    for name in names:
        for _ in range(warmup):
            steps_by_name[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(steps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            steps_by_name[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _status_kb(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def memory_probe(device: str):
    """Start autograd and AdamW once on a dummy tensor (so that no variant is charged for their
    start-up), mark the baseline and reset the peak; the returned function reports the peak above
    the baseline since then (module docstring)."""
    import torch

    dummy = torch.zeros(8, requires_grad=True, device=device)
    opt = torch.optim.AdamW([dummy])
    (dummy * 2).sum().backward()
    opt.step()
    del dummy, opt
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()

        def cuda_peak() -> dict:
            torch.cuda.synchronize()
            return {
                "method": "cuda max_memory_allocated - memory_allocated",
                "baseline_mb": baseline / 2**20,
                "step_peak_mb": (torch.cuda.max_memory_allocated() - baseline) / 2**20,
            }

        return cuda_peak
    baseline = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM after clear_refs reset - VmRSS"
    except OSError:
        method = "VmHWM since start - VmRSS (clear_refs not writable: an upper bound)"

    def cpu_peak() -> dict:
        hwm = _status_kb("VmHWM")
        return {
            "method": method,
            "baseline_mb": baseline / 1024,
            "step_peak_mb": (hwm - baseline) / 1024,
            "peak_rss_mb": hwm / 1024,
        }

    return cpu_peak


def measure_memory(step, steps: int, device: str) -> dict:
    """Step peak over ``steps`` steps, above the memory held before the first."""
    peak = memory_probe(device)
    for _ in range(steps):
        step()
    return peak()


def run_child(spec: dict) -> dict:
    """In a fresh process: build one variant on the fixed batch and measure its step peak."""
    import torch
    from hydra.utils import instantiate

    torch.set_num_threads(spec["threads"])
    cfg = compose_config(Path(spec["root"]), Path(spec["work"]), spec["smoke"], spec["overrides"])
    datamodule = instantiate(cfg.data)
    batch = fixed_batch(datamodule, spec["device"])
    module, loss_fn = make_variant(cfg, datamodule, spec["variant"], spec["device"])
    step = make_step(cfg, module, loss_fn, batch, spec["device"])
    return measure_memory(step, spec["memory_steps"], spec["device"])


def memory_in_subprocess(spec: dict) -> dict:
    """Run ``script --child spec`` and return its JSON answer (its last stdout line)."""
    proc = subprocess.run(
        [sys.executable, spec["script"], "--child", json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {spec.get('variant')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=500, help="sandbox cohort size")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per variant")
    fusions = fusion_methods()
    parser.add_argument("--fusions", nargs="+", default=fusions, choices=fusions, metavar="FUSION")
    parser.add_argument("--memory-steps", type=int, default=3, help="steps per memory child (0: skip)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    parser.add_argument("--smoke", action="store_true", help="debug=smoke model instead of quickstart")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return

    import torch
    from hydra.utils import instantiate

    from medweave.sandbox.generate import SandboxConfig, generate_cohort

    device = pick_device(args.device)
    encoders = [f"encoder:{m}" for m in MODALITIES]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = generate_cohort(work / "cohort", SandboxConfig(n_subjects=args.subjects, seed=0))
        configs = {f: compose_config(root, work, args.smoke, [f"model/fusion={f}"]) for f in args.fusions}
        cfg = configs[args.fusions[0]]
        datamodule = instantiate(cfg.data)
        batch = fixed_batch(datamodule, device)  # prepares the cache the memory children reuse
        steps = {}
        for variant in encoders:
            steps[variant] = make_step(cfg, *make_variant(cfg, datamodule, variant, device), batch, device)
        for fusion, fcfg in configs.items():
            steps[f"fused:{fusion}"] = make_step(
                fcfg, *make_variant(fcfg, datamodule, "fused", device), batch, device
            )
        times = {k: statistics.median(v) for k, v in time_round_robin(steps, args.steps, args.warmup).items()}
        del steps

        memory = {}
        if args.memory_steps > 0:
            spec = {
                "script": str(Path(__file__).resolve()),
                "root": str(root),
                "work": str(work),
                "smoke": args.smoke,
                "device": device,
                "threads": torch.get_num_threads(),
                "memory_steps": args.memory_steps,
            }
            for variant in encoders + [f"fused:{f}" for f in args.fusions]:
                fusion = variant.split(":")[1] if variant.startswith("fused") else args.fusions[0]
                memory[variant] = memory_in_subprocess(
                    spec
                    | {
                        "variant": "fused" if variant.startswith("fused") else variant,
                        "overrides": [f"model/fusion={fusion}"],
                    }
                )

    standalone_sum = sum(times[v] for v in encoders)
    result = {
        "benchmark": "fusion_cost",
        "model": "debug=smoke" if args.smoke else "experiment=quickstart",
        "subjects": args.subjects,
        "batch_size": int(cfg.data.batch_size),
        "steps": args.steps,
        "warmup": args.warmup,
        "device": device,
        "median_step_s": {
            "standalone": {m: times[f"encoder:{m}"] for m in MODALITIES},
            "standalone_sum": standalone_sum,
            "fused": {f: times[f"fused:{f}"] for f in args.fusions},
        },
        "ratio_fused_to_standalone_sum": {f: times[f"fused:{f}"] / standalone_sum for f in args.fusions},
    }
    if memory:
        peak_sum = sum(memory[v]["step_peak_mb"] for v in encoders)
        result |= {
            "memory_method": memory[encoders[0]]["method"],
            "memory_steps": args.memory_steps,
            "step_peak_mb": {
                "standalone": {m: memory[f"encoder:{m}"]["step_peak_mb"] for m in MODALITIES},
                "standalone_sum": peak_sum,
                "fused": {f: memory[f"fused:{f}"]["step_peak_mb"] for f in args.fusions},
            },
            "baseline_mb": {v.replace("encoder:", ""): memory[v]["baseline_mb"] for v in memory},
            "memory_ratio_fused_to_standalone_sum": {
                f: memory[f"fused:{f}"]["step_peak_mb"] / peak_sum for f in args.fusions
            },
        }
    machine = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.machine()} CPU"
    result |= {
        "machine": f"{machine}, {torch.get_num_threads()} torch threads",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
