"""The end of a training run (test pass, evaluation report, MLflow logging of figures and model)
against the training before it, and the evaluation's figures by the old per-resample bootstrap
and by the batched one (evaluation/resampled.py), side by side on the same predictions.

    python benchmarks/end_of_run.py                          # quickstart, 4,000-subject sandbox
    python benchmarks/end_of_run.py --subjects 600 --epochs 2   # a check

1. medweave-train experiment=quickstart (all four modalities, attention fusion), in a child
   process, on a sandbox cohort (made once under --work): its log's timestamps give the training
   time (first line after the parameter count to "Testing ...") and the end of the run ("Testing
   ..." to the last line), as a user sees them.
2. In this process, on that run's tested checkpoint: the held-out report as the end of a run
   makes it now (batched bootstrap), each part timed (predictions, subgroups, attribution,
   bootstrap and metrics, figures); then the same report with the bootstrap drawing one resample
   at a time through scikit-learn (what the end of a run did before), on the very same
   predictions. The two summaries must agree (largest difference printed, and where).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _stamp(line: str) -> float | None:
    match = STAMP.match(line)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(log_file: Path) -> dict[str, float]:
    """Training and end-of-run seconds from a medweave-train log."""
    lines = log_file.read_text().splitlines()
    start = next(_stamp(x) for x in lines if "Parameters:" in x)
    testing = next(_stamp(x) for x in lines if "] - Testing " in x)
    end = [t for t in map(_stamp, lines) if t is not None][-1]
    return {"training_s": round(testing - start, 2), "end_of_run_s": round(end - testing, 2)}


def largest_difference(a, b, path: str = "") -> tuple[float, str]:
    """The largest absolute difference between two summaries, and where it is."""
    if isinstance(a, dict):
        return max([largest_difference(a[k], b[k], f"{path}/{k}") for k in a] or [(0.0, path)])
    if isinstance(a, list):
        pairs = zip(a, b, strict=True)
        return max(
            [largest_difference(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(pairs)] or [(0.0, path)]
        )
    if isinstance(a, float) and isinstance(b, float):
        return (0.0 if (a != a and b != b) else abs(a - b)), path
    return (0.0 if a == b else float("inf")), path


class Replay:
    """Wraps a function: records its results on the first pass, returns them in the same order on
    the second, so both reports see the very same predictions (CPU kernels are not bit-for-bit
    repeatable across calls) and differ only in how the bootstrap runs."""

    def __init__(self, fn):
        self.fn, self.results, self.replaying, self.i = fn, [], False, 0

    def __call__(self, *args, **kwargs):
        if not self.replaying:
            self.results.append(self.fn(*args, **kwargs))
            return self.results[-1]
        self.i += 1
        return self.results[self.i - 1]


PARTS = {
    "predictions": "collect_predictions",
    "subgroups": "subject_groups",
    "attribution": "modality_shapley",
    "bootstrap_and_metrics": "summarize",
    "figures": "binary_figures",
    "html": "write_report",
}


def profiled(fn, *args) -> tuple[object, float, dict[str, float]]:
    """fn(*args), its wall time, and the cumulative time of each part of the report."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    t = time.perf_counter()
    profile.enable()
    out = fn(*args)
    profile.disable()
    wall = time.perf_counter() - t
    stats = pstats.Stats(profile).stats
    parts = {
        name: round(max((v[3] for k, v in stats.items() if k[2] == target), default=0.0), 3)
        for name, target in PARTS.items()
    }
    return out, wall, parts


def report_twice(ckpt: Path, cohort: Path, work: Path) -> dict:
    """The batched report as the end of a run makes it now; then the same report with the
    bootstrap one resample at a time (as before), on the very same predictions (replayed: CPU
    kernels are not bit-for-bit repeatable across calls), so the figures must agree."""
    from medweave.cli.eval import restore_for_inference
    from medweave.evaluation import run as run_module
    from medweave.evaluation import summary as summary_module
    from medweave.evaluation.run import evaluate_split
    from tests.conftest import compose_run

    cfg = compose_run("eval", [f"ckpt_path={ckpt}", f"data.root={cohort}"], work / "logs", work / "eval")
    _, datamodule, model = restore_for_inference(cfg)
    replays = [Replay(getattr(run_module, name)) for name in ("collect_predictions", "modality_shapley")]
    for replay in replays:
        setattr(run_module, replay.fn.__name__, replay)
    args = (model, datamodule, "held_out", "quickstart", cfg.evaluation)
    after, after_s, after_parts = profiled(evaluate_split, *args, work / "after")
    for replay in replays:
        replay.replaying = True
    batched = summary_module.weighted_fn
    summary_module.weighted_fn = lambda kind, preds: None
    before, _, before_parts = profiled(evaluate_split, *args, work / "before")
    summary_module.weighted_fn = batched
    for replay in replays:
        setattr(run_module, replay.fn.__name__, replay.fn)
    old_bootstrap, new_bootstrap = before_parts["bootstrap_and_metrics"], after_parts["bootstrap_and_metrics"]
    difference, where = largest_difference(before, after)
    return {
        "held_out_subjects": after["n"],
        "bootstrap_resamples": after["bootstrap"]["resamples"],
        "report_s": round(after_s, 2),
        "report_parts_s": after_parts,
        "bootstrap_per_resample_s": old_bootstrap,
        "bootstrap_batched_s": new_bootstrap,
        "bootstrap_speedup": round(old_bootstrap / new_bootstrap, 1),
        # The report as it was: this one with the per-resample bootstrap in place of the batched.
        "report_per_resample_s": round(after_s - new_bootstrap + old_bootstrap, 2),
        "largest_figure_difference": difference,
        "largest_difference_at": where,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=None, help="default: the quickstart's 12")
    parser.add_argument("--work", type=Path, default=ROOT / "logs" / "bench_end_of_run")
    args = parser.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    bin_dir = Path(sys.executable).parent
    cohort = args.work / f"sandbox_{args.subjects}"
    if not (cohort / "metadata" / "dataset.json").exists():
        subprocess.run(
            [bin_dir / "medweave-sandbox", f"out={cohort}", f"n_subjects={args.subjects}", "seed=0"],
            check=True,
            capture_output=True,
        )
    run_dir = args.work / f"run_{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    overrides = [
        "experiment=quickstart",
        f"data.root={cohort}",
        f"paths.log_dir={args.work / 'logs'}",
        f"hydra.run.dir={run_dir}",
    ]
    if args.epochs:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    subprocess.run([bin_dir / "medweave-train", *overrides], check=True, capture_output=True)
    timing = phases(run_dir / "quickstart.log")
    tested = next(x for x in (run_dir / "quickstart.log").read_text().splitlines() if "] - Testing " in x)
    ckpt = run_dir / "checkpoints" / tested.split("] - Testing ")[1].split(" ")[0]
    sys.path.insert(0, str(ROOT))
    result = {
        "benchmark": "end_of_run",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "subjects": args.subjects,
        **timing,
        "end_of_run_share_of_training": round(timing["end_of_run_s"] / timing["training_s"], 4),
        **report_twice(ckpt, cohort, args.work),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
