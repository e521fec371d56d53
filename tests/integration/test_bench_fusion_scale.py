"""benchmarks/fusion_cost.py and benchmarks/scale.py keep running and report what they promise
(tiny sizes; no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def run_benchmark(script: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fusion_cost_runs_and_reports():
    result = run_benchmark(
        "fusion_cost.py",
        "--smoke",
        "--subjects",
        "60",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--memory-steps",
        "1",
        "--fusions",
        "attention",
        "concat",
        "--device",
        "cpu",
    )
    modalities = {"ehr_codes", "text", "image", "genomics"}
    assert result["benchmark"] == "fusion_cost" and result["device"] == "cpu"
    times = result["median_step_s"]
    assert set(times["standalone"]) == modalities and set(times["fused"]) == {"attention", "concat"}
    assert times["standalone_sum"] == pytest.approx(sum(times["standalone"].values()))
    assert all(r > 0 for r in result["ratio_fused_to_standalone_sum"].values())
    peaks = result["step_peak_mb"]
    assert set(peaks["standalone"]) == modalities and set(peaks["fused"]) == {"attention", "concat"}
    assert set(result["memory_ratio_fused_to_standalone_sum"]) == {"attention", "concat"}
    assert all(m > 0 for m in result["baseline_mb"].values())
    assert result["date"] and result["machine"]


def test_scale_runs_and_reports():
    result = run_benchmark(
        "scale.py",
        "--smoke",
        "--subjects",
        "40",
        "--variants",
        "20",
        "--factor",
        "3",
        "--image-factor",
        "2",
        "--variant-growths",
        "1",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--device",
        "cpu",
    )
    rows = {row["grows"]: row for row in result["rows"]}
    assert [row["grows"] for row in result["rows"]] == [
        "base",
        "subjects",
        "events",
        "image_size",
        "variants",
    ]
    base = rows["base"]
    assert (base["subjects"], base["max_events"], base["image_size"], base["variants"]) == (40, 32, 32, 20)
    assert rows["subjects"]["subjects"] == 120 and rows["events"]["max_events"] == 96
    assert rows["image_size"]["image_size"] == 64 and rows["variants"]["variants"] == 60
    # The densified cohort really has more events per subject than the base keeps.
    assert rows["events"]["events_per_subject"] > base["max_events"]
    assert rows["subjects"]["steps_per_epoch"] > base["steps_per_epoch"] >= 1
    assert rows["subjects"]["cache_mb"] > base["cache_mb"] > 0
    for row in result["rows"]:
        assert row["step_s"] > 0 and row["epoch_s"] > 0 and row["prepare_s"] > 0
        assert row["step_peak_mb"] >= 0 and row["baseline_mb"] > 0
    assert result["date"] and result["machine"]
