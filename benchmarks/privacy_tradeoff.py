"""The utility-privacy trade-off: for each training setting, train on the same cohort, audit the
model (medweave-audit: membership inference and canary exposure) and tabulate test AUROC against
epsilon and attack success.

    python benchmarks/privacy_tradeoff.py                       # no DP, and DP at epsilon 1, 4, 16
    python benchmarks/privacy_tradeoff.py --epsilons 2 8 --shadow-models 4
    python benchmarks/privacy_tradeoff.py --subjects 300 --epochs 2 --shadow-models 2   # a check

Settings: no DP, then ``privacy=dp privacy.target_epsilon=<e>`` for each epsilon, where the
``privacy`` config group exists (configs/privacy/dp.yaml); without it the DP rows are skipped with
a message. Every row runs the same command otherwise (``--setting``: the leaky setting of
RESULTS.md, "Privacy audit", by default) on one sandbox cohort (made once under --work) with one
seed, each audit in a child process. The table goes to benchmarks/results/<time>-privacy_tradeoff.md
(and .json); it is printed, and the last line of stdout is one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where a model without DP leaks measurably (RESULTS.md, "Privacy audit"): a small training set
# (30 % of the cohort; 60 % held out, so there are many non-members to audit), the EHR encoder
# twice as wide without dropout or weight decay, many epochs, no early stopping, and the last
# epoch's weights.
LEAKY_SANDBOX = ["+split_fractions={train:0.3,tuning:0.1,held_out:0.6}"]
LEAKY = [
    "experiment=quickstart",
    "data.modalities=[ehr_codes]",
    "data.batch_size=32",
    "model.dim=64",
    "model.module.modality_dropout=0",
    "model.encoders.ehr_codes.dropout=0",
    "model.optimizer.weight_decay=0",
    "model.optimizer.lr=0.003",
    "~callbacks.early_stopping",
    "audit.checkpoint=last",
]


def dp_overrides(epsilon: float, configs: Path) -> list[str] | None:
    """The overrides of a DP run at ``epsilon``, or None where medweave has no privacy group.
    ``privacy=dp`` where train.yaml's defaults list the group, else ``+privacy=dp``."""
    if not (configs / "privacy" / "dp.yaml").is_file():
        return None
    listed = any(
        line.strip().startswith("- privacy") for line in (configs / "train.yaml").read_text().splitlines()
    )
    return [f"{'' if listed else '+'}privacy=dp", f"privacy.target_epsilon={epsilon:g}"]


def settings(epsilons: list[float], configs: Path) -> list[tuple[str, float | None, list[str]]]:
    """(label, target epsilon, overrides) per row: no DP first, then each epsilon DP can run."""
    rows: list[tuple[str, float | None, list[str]]] = [("no DP", None, [])]
    for eps in epsilons:
        overrides = dp_overrides(eps, configs)
        if overrides is None:
            print(
                "no privacy config group (configs/privacy/dp.yaml): DP rows skipped "
                f"(epsilons {epsilons}); merge DP training to run them",
                file=sys.stderr,
            )
            break
        rows.append((f"DP, epsilon {eps:g}", eps, overrides))
    return rows


def _ci(entry: dict) -> str:
    return f"{entry['value']:.3f} ({entry['ci_low']:.3f}-{entry['ci_high']:.3f})"


def row_of(label: str, target_eps: float | None, report: dict, seconds: float) -> dict:
    a, t, k = report["attacks"], report["target"], report["canaries"]
    return {
        "setting": label,
        "target_epsilon": target_eps,
        "epsilon_spent": t["epsilon"],
        "test_auroc": t["test_auroc"],
        "loss_attack_auroc": a["loss"]["auroc"],
        "lira_auroc": a["lira_online"]["auroc"],
        "lira_offline_auroc": a["lira_offline"]["auroc"],
        "lira_tpr_at_fpr_1pct": a["lira_online"]["tpr_at_fpr_1pct"],
        "loss_tpr_at_fpr_1pct": a["loss"]["tpr_at_fpr_1pct"],
        "canary_exposure_planted": k["mean_exposure_planted"],
        "canary_exposure_control": k["mean_exposure_control"],
        "canary_ceiling_bits": k["ceiling_bits"],
        "members_per_side": report["setting"]["members"],
        "shadow_models": report["setting"]["shadow_models"],
        "seconds": round(seconds, 1),
    }


def table(rows: list[dict]) -> str:
    """A markdown table of the rows (95 % bootstrap CIs in brackets)."""
    head = (
        "| setting | epsilon | test AUROC | loss-attack AUROC | LiRA AUROC | LiRA offline AUROC "
        "| LiRA TPR @ 1 % FPR | canary exposure (planted / control, bits) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        eps = r["epsilon_spent"] if r["epsilon_spent"] is not None else r["target_epsilon"]
        lines.append(
            f"| {r['setting']} | {'∞' if eps is None else f'{eps:.3g}'} | {_ci(r['test_auroc'])} "
            f"| {_ci(r['loss_attack_auroc'])} | {_ci(r['lira_auroc'])} | {_ci(r['lira_offline_auroc'])} "
            f"| {_ci(r['lira_tpr_at_fpr_1pct'])} "
            f"| {r['canary_exposure_planted']:.2f} / {r['canary_exposure_control']:.2f} "
            f"(of {r['canary_ceiling_bits']:.2f}) |"
        )
    return head + "\n".join(lines)


def sandbox(work: Path, subjects: int, seed: int, extra: list[str], env: dict) -> Path:
    """The cohort every row trains on, made once per size, seed and sandbox overrides."""
    import hashlib

    key = hashlib.sha256(" ".join(extra).encode()).hexdigest()[:8]
    out = work / f"sandbox-{subjects}-{seed}-{key}"
    if not (out / "metadata" / "dataset.json").is_file():
        cmd = [sys.executable, "-m", "medweave.cli.sandbox", f"out={out}", f"n_subjects={subjects}"]
        cmd += [f"seed={seed}", "overwrite=true", *extra]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, default=1000, help="sandbox cohort size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--shadow-models", type=int, default=4)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 4.0, 16.0])
    parser.add_argument("--setting", nargs="*", default=LEAKY, help="medweave-audit overrides of every row")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides, after --setting")
    parser.add_argument("--sandbox", nargs="*", default=LEAKY_SANDBOX, help="medweave-sandbox overrides")
    parser.add_argument("--work", type=Path, default=Path("logs/privacy_tradeoff"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from medweave.cli.hydra_main import config_dir

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    # One thread per process: on a shared 2-core machine an epoch took 8 s with it, 36 s without
    # (OpenMP threads spin against other jobs). Set OMP_NUM_THREADS to choose otherwise.
    env.setdefault("OMP_NUM_THREADS", "1")
    work = args.work.resolve()
    cohort = sandbox(work, args.subjects, args.seed, args.sandbox, env)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    rows = []
    for label, eps, overrides in settings(args.epsilons, config_dir()):
        run_dir = work / "runs" / stamp / label.replace(" ", "_").replace(",", "")
        cmd = [
            sys.executable, "-m", "medweave.cli.audit", f"data.root={cohort}", f"seed={args.seed}",
            f"trainer.max_epochs={args.epochs}", f"audit.shadow_models={args.shadow_models}",
            f"paths.log_dir={work / 'logs'}", f"hydra.run.dir={run_dir}",
            *args.setting, *args.extra, *overrides,
        ]  # fmt: skip
        print(f"== {label}: {' '.join(cmd[3:])}", file=sys.stderr)
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        report = json.loads((run_dir / "audit" / "audit.json").read_text())
        rows.append(row_of(label, eps, report, time.perf_counter() - start))
    text = table(rows)
    result = {
        "benchmark": "privacy_tradeoff",
        "date": stamp,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "subjects": args.subjects,
        "seed": args.seed,
        "epochs": args.epochs,
        "sandbox": args.sandbox,
        "overrides": [*args.setting, *args.extra],
        "rows": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{stamp}-privacy_tradeoff.md").write_text(text + "\n")
    (args.results / f"{stamp}-privacy_tradeoff.json").write_text(json.dumps(result, indent=2))
    print(text)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
