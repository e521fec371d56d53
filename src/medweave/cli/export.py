"""medweave-export: check what a run may take out of the platform, and write only that.

    medweave-export run=logs/train/runs/<time> out=release/cvd-model
    medweave-export run=<MLflow run id> out=release/cvd-model export.include_model=true
    medweave-export run=... out=... export.min_cell=10

Gathers the metrics, the evaluation report and its figures, the config (paths scrubbed) and, with
export.include_model=true, the model weights; checks every file (no subject-level rows, no subject
IDs or dates, every count and every subgroup figure from at least export.min_cell persons, small
cells merged or suppressed: docs/output-control.md) and writes what passes, with manifest.json
(sha256 and checks of each file, the reason for each one refused), into ``out``. Each refused file
is logged on one line. Exit status 0 when everything needed passed, 1 when something was refused
(a model not asked for does not count), 2 on bad input.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("medweave")


def export(cfg):
    """Run the export; returns medweave.export.gather.Export (the CLI exits 1 if it failed)."""
    from medweave.export.gather import export_run

    result = export_run(
        str(cfg.run),
        Path(str(cfg.out)),
        min_cell=int(cfg.export.min_cell),
        include_model=bool(cfg.export.include_model),
        tracking_uri=cfg.get("tracking_uri"),
        mlflow_dir=str(cfg.paths.mlflow_dir),
    )
    for item in result.refused:
        log.warning("refused %s: %s%s", item.path, item.reason, " (optional)" if item.optional else "")
    exported = sum(i.status == "exported" for i in result.items)
    log.info(
        "Exported %d files to %s, refused %d (see %s)",
        exported,
        result.out,
        len(result.refused),
        result.out / "manifest.json",
    )
    return result


def _export_and_exit(cfg) -> None:
    if export(cfg).failed:
        print("medweave-export: files were refused (listed above and in manifest.json)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    from medweave.cli.hydra_main import run

    run(_export_and_exit, "export", "medweave-export")


if __name__ == "__main__":
    main()
