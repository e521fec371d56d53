"""The table at the end of a multirun (experiment=ablation): one row per job, its test metrics
with bootstrap 95 % CIs from the job's evaluation report, written to the sweep folder as
comparison.md and comparison.csv and logged to MLflow as a run of its own."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("medweave")


def collect(sweep_dir: Path) -> list[dict]:
    """One row per finished job under ``sweep_dir`` (jobs without a report are listed as failed)."""
    import yaml

    rows = []
    for job in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
    ):
        overrides = (
            yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            if (job / ".hydra").exists()
            else []
        )
        config = (
            yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) if (job / ".hydra").exists() else {}
        )
        row = {
            "job": int(job.name),
            "overrides": " ".join(o for o in overrides if not o.startswith("data.root=")),
            "modalities": "+".join(config.get("data", {}).get("modalities", [])),
            "fusion": config.get("model", {}).get("fusion", {}).get("_target_", "").rsplit(".", 1)[-1],
            "seed": config.get("seed"),
        }
        if config.get("baseline"):  # a tabular arm has no fusion: its column names the baseline
            row["fusion"] = f"baseline {config['baseline'].get('name', '')}".strip()
        report = job / "evaluation" / "evaluation.json"
        if report.exists():
            summary = json.loads(report.read_text())
            row["n"] = summary["n"]
            row["metrics"] = summary["overall"]
        rows.append(row)
    return rows


def _cell(entry: dict | None) -> str:
    if not entry or entry["value"] != entry["value"]:
        return "n/a"
    return f"{entry['value']:.3f} ({entry['ci_low']:.3f}-{entry['ci_high']:.3f})"


def write_tables(rows: list[dict], folder: Path, sort_by: str | None = None) -> tuple[Path, Path]:
    names = next((list(r["metrics"]) for r in rows if "metrics" in r), [])
    key = sort_by if sort_by in names else (names[0] if names else None)
    if key:

        def rank(row):  # best first; failed runs and NaN last
            value = row.get("metrics", {}).get(key, {}).get("value", float("nan"))
            return float("inf") if value != value else -value

        rows = sorted(rows, key=rank)
    head = ["job", "overrides", "modalities", "fusion", "seed", "n", *names]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    with open(folder / "comparison.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head[:6] + [f"{n}{s}" for n in names for s in ("", "_ci_low", "_ci_high")])
        for r in rows:
            base = [r["job"], r["overrides"], r["modalities"], r["fusion"], r["seed"], r.get("n", "failed")]
            metrics = r.get("metrics", {})
            writer.writerow(
                base + [metrics.get(n, {}).get(s, "") for n in names for s in ("value", "ci_low", "ci_high")]
            )
            md.append("| " + " | ".join(map(str, base + [_cell(metrics.get(n)) for n in names])) + " |")
    (folder / "comparison.md").write_text("\n".join(md) + "\n")
    return folder / "comparison.md", folder / "comparison.csv"


class ComparisonTable(Callback):
    """A Hydra callback (hydra.callbacks) that writes and logs the table when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect(sweep_dir)
        if not rows:
            return
        md, csv_path = write_tables(
            rows, sweep_dir, sort_by=str(config.get("optimized_metric", "")).split("/")[-1]
        )
        log.info("Comparison of %d runs:\n%s", len(rows), md.read_text())
        self._log_to_mlflow(config, md, csv_path)

    def _log_to_mlflow(self, config, *files: Path) -> None:
        import mlflow

        from medweave.tracking.mlflow import resolve_tracking_uri

        settings = config.get("logger", {}).get("mlflow")
        if not settings:
            return
        client = mlflow.MlflowClient(resolve_tracking_uri(settings.store_dir, settings.get("tracking_uri")))
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is None:
            return
        run = client.create_run(experiment.experiment_id, run_name=f"{config.task_name}-comparison")
        for file in files:
            client.log_artifact(run.info.run_id, str(file))
        client.set_terminated(run.info.run_id)
