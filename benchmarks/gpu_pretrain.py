"""Pretraining step throughput and MFU on GPUs: the next-event backbone in bf16, SDPA, torch.compile.

    python benchmarks/gpu_pretrain.py                                  # one GPU, ~100M-parameter backbone
    torchrun --standalone --nproc-per-node=8 benchmarks/gpu_pretrain.py  # DDP over the GPUs present
    bash benchmarks/gpu_pretrain.sh                                    # the prepared set (a GPU lent)
    python benchmarks/gpu_pretrain.py --dry                            # tiny sizes on CPU: a check

The model is medweave's own (EventTransformer + NextEvent, as medweave-pretrain builds them:
causal, no dropout, the fused causal SDPA path); the batches are synthetic, full windows drawn
once on the device (codes, value bins, ages, gaps), so the figure is the model step's, not the
loader's (the CPU loader is measured by benchmarks/pretrain_throughput.py). A step is forward,
backward, gradient clipping and a fused AdamW step, under bf16 autocast; with several processes
the gradients are all-reduced by DDP (NCCL; gloo on CPU).

FLOPs per step, printed with the result (the PaLM appendix B count, causal attention counted
whole, as there):

    6 * N * tokens + 12 * n_layers * dim * width * tokens

N = parameters that multiply (all but the code and value embedding tables, which are looked up;
the code head over the vocabulary counts). MFU = FLOPs per second / (GPUs x peak dense bf16
FLOP/s); the peak comes from --peak-tflops or the device name (H100/H200 SXM: 989 TFLOP/s, A100:
312). Prints one JSON line (rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone

import torch
from torch import nn

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM
FORMULA = "6 * N * tokens + 12 * n_layers * dim * width * tokens (N: parameters that multiply)"


class Step(nn.Module):
    """Backbone and next-event objective in one module, so DDP sees one forward."""

    def __init__(self, backbone: nn.Module, objective: nn.Module):
        super().__init__()
        self.backbone, self.objective = backbone, objective

    def forward(self, batch: dict) -> torch.Tensor:
        inputs, targets = self.objective.prepare(batch)
        return self.objective.loss(self.backbone(inputs), targets)[0]


def synthetic_batch(batch: int, width: int, vocab: int, n_bins: int, device, generator) -> dict:
    """Full windows: one static event, then timed events a few days to years apart."""
    codes = torch.randint(3, vocab, (batch, width), generator=generator, device=device)
    bins = torch.randint(0, n_bins + 1, (batch, width), generator=generator, device=device)
    delta = torch.rand((batch, width), generator=generator, device=device) * 400
    delta[:, 0], delta[:, 1] = float("nan"), 0.0
    age = 20 * 365.25 + torch.cumsum(torch.nan_to_num(delta), 1)
    age[:, 0] = float("nan")
    return {"codes": codes, "bins": bins, "age": age, "delta": delta}


def flops_per_step(n_matmul_params: int, n_layers: int, dim: int, width: int, tokens: int) -> float:
    return 6 * n_matmul_params * tokens + 12 * n_layers * dim * width * tokens


def peak_tflops(args, device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=16384, help="code ids (registry ICD, ATC, labs)")
    parser.add_argument("--n-bins", type=int, default=10)
    parser.add_argument("--width", type=int, default=512, help="tokens per window")
    parser.add_argument("--batch", type=int, default=64, help="windows per GPU per step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation happens here)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="per device; default from the device name")
    parser.add_argument("--dry", action="store_true", help="tiny sizes on CPU: checks the script runs")
    args = parser.parse_args()
    if args.dry:
        args.dim, args.layers, args.heads, args.vocab, args.width, args.batch = 32, 2, 2, 64, 32, 4
        args.steps, args.warmup = 3, 2

    from medweave.models.pretrain.backbone import EventTransformer
    from medweave.models.pretrain.objectives import NextEvent

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and not args.dry
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if world > 1:
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(rank)

    backbone = EventTransformer(
        args.vocab, args.n_bins, args.dim, args.layers, args.heads, dropout=0.0, causal=True
    )
    model = Step(backbone, NextEvent(args.dim, args.vocab)).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    n_backbone = sum(p.numel() for p in backbone.parameters())
    looked_up = backbone.code.weight.numel() + backbone.value.weight.numel()
    n_matmul = n_params - looked_up
    if not args.no_compile:
        backbone.compile()  # in place, as medweave-pretrain model.compile=true does
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    generator = torch.Generator(device=device).manual_seed(rank)
    batches = [
        synthetic_batch(args.batch, args.width, args.vocab, args.n_bins, device, generator) for _ in range(4)
    ]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    times, losses = [], []
    compile_start = time.perf_counter()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync()
            warmup_s = time.perf_counter() - compile_start
        start = time.perf_counter()
        with autocast:
            loss = model(batches[i % len(batches)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    tokens_per_gpu = args.batch * args.width
    step = statistics.median(times)
    flops = flops_per_step(n_matmul, args.layers, args.dim, args.width, tokens_per_gpu)
    peak = peak_tflops(args, device)
    if world > 1:  # the slowest rank sets the pace
        t = torch.tensor([step], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        step = float(t)
    out = {
        "benchmark": "gpu_pretrain",
        "date": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({os.cpu_count()} cores)",
        "processes": world,
        "torch": torch.__version__,
        "precision": args.precision,
        "compiled": not args.no_compile,
        "model": {"dim": args.dim, "layers": args.layers, "heads": args.heads, "vocab": args.vocab},
        "params": {"total": n_params, "backbone": n_backbone, "multiplying (N)": n_matmul},
        "width": args.width,
        "batch_per_process": args.batch,
        "warmup_s": round(warmup_s, 1),
        "median_step_s": round(step, 5),
        "tokens_per_s": round(world * tokens_per_gpu / step, 1),
        "tokens_per_s_per_process": round(tokens_per_gpu / step, 1),
        "flops_formula": FORMULA,
        "flops_per_step_per_process": flops,
        "achieved_tflops_per_process": round(flops / step / 1e12, 3),
        "peak_tflops_per_process": peak,
        "mfu": round(flops / step / (peak * 1e12), 4) if peak else None,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }
    if cuda:
        out["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if rank == 0:
        print(json.dumps(out), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
