"""The MFU benchmark runs on CPU and reports its FLOP count by the formula it states."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def test_text_encoder_mfu_runs_on_cpu_and_reports_no_mfu_without_a_peak():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/text_encoder_mfu.py"), "--device", "cpu"]
        + ["--seq-len", "128", "--batch", "2", "--steps", "2", "--warmup", "0"],
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mfu"] is None and "--peak-tflops" in result["mfu_note"]
    assert result["device"] == "cpu" and result["precision"] == "32" and result["steps"] == 2
    # BERT-base without embeddings: 12 layers of 4 * 768^2 + 2 * 768 * 3072 weights, biases and norms.
    assert result["n_params_non_embedding"] == 85_054_464
    tokens = 2 * 128
    assert result["model_flops_per_step"] == 6 * 85_054_464 * tokens + 12 * 12 * 768 * 128 * tokens
    assert result["formula"].startswith("6 * N_params_non_embedding * tokens + 12 * n_layers")
    assert result["achieved_tflops"] == pytest.approx(
        result["model_flops_per_step"] / result["median_step_s"] / 1e12
    )
    assert result["date"] and result["machine"]
