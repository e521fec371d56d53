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


def one_log_stream() -> None:
    """Lightning adds its own console handler to the "lightning" logger on import; under Hydra,
    whose root handlers already print (and write the run's log file), that doubles every line."""
    if logging.getLogger().handlers:
        logging.getLogger("lightning").handlers.clear()


class _Drop(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_libraries() -> None:
    """Keep what a user needs on the console and in a Slurm log; drop the libraries' adverts and
    chatter: Lightning's tips, TPU line and checkpoint-loading lines (medweave says which checkpoint
    it tests or resumes from), the srun hint (medweave's own launch decides that),
    MLflow creating an experiment or its tables, a torch deprecation inside Lightning. In a log
    file, tqdm bars are off (their carriage returns make one endless line): the steps log a line
    when done, and training logs a line per epoch (training/progress.py)."""
    import os
    import warnings

    lightning_chatter = ("💡 Tip", "TPU available", "Restoring states from", "Loaded model weights from")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_Drop(*lightning_chatter))
    logging.getLogger("lightning.pytorch.loggers.mlflow").addFilter(_Drop("Experiment with name"))
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*The `srun` command is available on your system")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from medweave.launch import loader_workers, rank_suffix, run_stamp
    from medweave.tasks.types import default_head, default_monitor

    OmegaConf.register_new_resolver("medweave_run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("medweave_rank_suffix", rank_suffix, replace=True)
    OmegaConf.register_new_resolver("medweave_loader_workers", loader_workers, replace=True)
    OmegaConf.register_new_resolver("medweave_task_head", default_head, replace=True)
    OmegaConf.register_new_resolver("medweave_task_monitor", default_monitor, replace=True)


register_resolvers()  # on import too: configs composed through Hydra's compose API use them


def root_problems(cfg) -> list[str]:
    """What is wrong with data.root (unset, or not a cohort folder), for a command's config check."""
    from omegaconf import OmegaConf

    from medweave.data.contract import require_root
    from medweave.errors import MedweaveError

    if OmegaConf.is_missing(cfg.data, "root"):
        return ["data.root is not set: pass data.root=<cohort folder>"]
    try:
        require_root(cfg.data.root)
    except MedweaveError as err:
        return [str(err)]
    return []


def task_file_overrides(args: list[str]) -> list[str]:
    """``task=<path of a .yaml file>`` -> the overrides selecting configs/task/aces.yaml with that
    file (``task=aces task.aces=<file> task.name=... task.type=...``, read from the file by
    data/aces.py). Hydra's ``task=`` picks a config by name from configs/task/; this is the one
    place a path is accepted instead. Keys the command line sets itself are left to it."""
    explicit = {arg.split("=", 1)[0].lstrip("+~") for arg in args if "=" in arg}
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key != "task" or not value.endswith((".yaml", ".yml")):
            out.append(arg)
            continue
        from medweave.data.aces import task_overrides

        translated = task_overrides(value)
        out += [o for o in translated if o.split("=", 1)[0] not in explicit or o.startswith("task=")]
    return out


def run(task_fn, config_name: str, program: str) -> None:
    quiet_libraries()  # first: tqdm reads its settings from the environment when imported
    import hydra
    from hydra.errors import InstantiationException

    from medweave.errors import MedweaveError

    def fail(err: MedweaveError):
        log.error("%s", err)
        print(f"{program}: error: {err}", file=sys.stderr)
        sys.exit(2)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _main(cfg):
        logging.getLogger("numexpr").setLevel(logging.WARNING)  # its thread count, on every pandas import
        try:
            return task_fn(cfg)
        except MedweaveError as err:
            fail(err)
        except InstantiationException as err:  # Hydra wraps what a constructor raised
            if isinstance(err.__cause__, MedweaveError):
                fail(err.__cause__)
            raise
        except Exception as err:
            # Only a run that imported the preemption module (and Lightning, torch with it) raises
            # Preempted: looked up there, --help and validation start without those imports.
            preemption = sys.modules.get("medweave.training.preemption")
            if preemption is not None and isinstance(err, preemption.Preempted):
                sys.exit(preemption.EXIT_PREEMPTED)  # logged where it happened; the checkpoint is on disk
            raise

    try:
        sys.argv = [sys.argv[0], *task_file_overrides(sys.argv[1:])]
    except MedweaveError as err:
        fail(err)
    _main()
