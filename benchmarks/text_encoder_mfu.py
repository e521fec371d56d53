"""Model FLOPs utilisation (MFU) of medweave's text encoder at BERT-base size (hidden 768, 12 layers,
12 heads, intermediate 3072): one training step (forward, backward, AdamW step) on full-length
sequences, bf16 autocast on CUDA.

    python benchmarks/text_encoder_mfu.py                  # CUDA: seq 512, batch 32
    python benchmarks/text_encoder_mfu.py --compile --attn eager    # other kernels, to compare
    python benchmarks/text_encoder_mfu.py --device cpu --seq-len 128 --batch 2 --steps 2   # a check

MFU = achieved model FLOP/s / peak FLOP/s, with model FLOPs per step (PaLM, appendix B)
    6 * N * tokens + 12 * n_layers * hidden * seq_len * tokens
where N counts the transformer's non-embedding parameters (the embedding lookups and our pooled
projection are left out) and tokens = batch * seq_len. The first term is the matmuls of forward
(2 N per token) and backward (4 N); the second is attention scores and their weighted sum. Only what
the model needs counts, so recomputation or padding cannot raise MFU. Peak is the GPU's dense bf16
tensor-core rate from the table below (by device name) or --peak-tflops; on CPU, or at a precision
the table does not cover, "mfu" is null and "mfu_note" says why. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

# Dense bf16 tensor-core peaks in TFLOP/s (NVIDIA datasheets; their "with sparsity" figures halved),
# matched in this order against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H200", 989.0),
    ("A100", 312.0),
]
FORMULA = "6 * N_params_non_embedding * tokens + 12 * n_layers * hidden * seq_len * tokens"
BERT_BASE = {
    "model_type": "bert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}


def model_flops_per_step(n_params: int, n_layers: int, hidden: int, seq_len: int, tokens: int) -> int:
    return 6 * n_params * tokens + 12 * n_layers * hidden * seq_len * tokens


def peak_tflops(device, precision: str, given: float | None) -> tuple[float | None, str]:
    """The peak and where it came from, or None and why there is none."""
    if given:
        return given, "peak from --peak-tflops"
    if device.type != "cuda":
        return None, f"no peak FLOP/s is known for {device.type}; pass --peak-tflops to get an MFU"
    import torch

    name = torch.cuda.get_device_name(device)
    if precision != "bf16-mixed":
        return None, f"the peak table is for bf16 tensor cores, not {precision}; pass --peak-tflops"
    for key, peak in PEAK_BF16_TFLOPS:
        if key in name:
            return peak, f"dense bf16 peak of {key} ({name})"
    known = ", ".join(k for k, _ in PEAK_BF16_TFLOPS)
    return None, f"{name!r} is not in the peak table ({known}); pass --peak-tflops"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if there is one)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (and compiling)")
    parser.add_argument(
        "--precision", choices=["bf16-mixed", "32"], default=None, help="default: bf16-mixed on CUDA, else 32"
    )
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="attn_implementation")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (inductor)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak table")
    args = parser.parse_args()

    import torch

    from medweave.models.encoders.text import TextEncoder

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32")
    torch.manual_seed(0)
    encoder = TextEncoder(
        vocab_size=30522, pad_token_id=0, dim=64, config=dict(BERT_BASE), attn_implementation=args.attn
    ).to(device)
    n_params = sum(p.numel() for p in encoder.transformer.encoder.parameters())  # layers, no embeddings
    if args.compile:
        encoder.compile()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4, fused=device.type == "cuda")
    # Full-length sequences: every token is real, so the FLOP count is what the hardware did.
    inputs = {
        "input_ids": torch.randint(1, 30522, (args.batch, args.seq_len), device=device),
        "attention_mask": torch.ones(args.batch, args.seq_len, dtype=torch.long, device=device),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = encoder(inputs).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)

    cfg = encoder.transformer.config
    tokens = args.batch * args.seq_len
    flops = model_flops_per_step(n_params, cfg.num_hidden_layers, cfg.hidden_size, args.seq_len, tokens)
    step_s = statistics.median(times)
    achieved = flops / step_s / 1e12
    peak, note = peak_tflops(device, precision, args.peak_tflops)
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    result = {
        "benchmark": "text_encoder_mfu",
        "model": "BERT-base-like TextEncoder (hidden 768, 12 layers, 12 heads, intermediate 3072)",
        "device": device.type,
        "precision": precision,
        "attn_implementation": args.attn,
        "compile": args.compile,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "steps": args.steps,
        "median_step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "n_params_non_embedding": n_params,
        "formula": FORMULA,
        "model_flops_per_step": flops,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
        "mfu_note": note,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
        "machine": f"{machine}, torch {torch.__version__}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
