"""Run a task function under Hydra with medweave's configs; MedweaveError exits 2 with one line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("medweave")


def config_dir() -> Path:
    """Configs ship inside the wheel (medweave/configs); an editable install reads the repo's."""
    packaged = Path(__file__).resolve().parents[1] / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[3] / "configs"


def run(task_fn, config_name: str, program: str) -> None:
    import hydra

    from medweave.errors import MedweaveError

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _main(cfg):
        try:
            return task_fn(cfg)
        except MedweaveError as err:
            log.error("%s", err)
            print(f"{program}: error: {err}", file=sys.stderr)
            sys.exit(2)

    _main()
