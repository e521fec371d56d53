"""MLflow for medweave runs: an embedded local store by default, a server when asked.

Where runs go, first match wins: the logger's ``tracking_uri``; the MLFLOW_TRACKING_URI
environment variable; an embedded SQLite store under ``store_dir`` (no server needed).

One training run is one MLflow run, however often it is preempted: the run id is kept in the
output folder (``run_id_file``), and a process that starts in that folder continues that run.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

# Config keys never sent to MLflow as params: fitted vocabularies (codes and note words).
PRIVATE_KEYS = ("data.vocab",)
# The user's setting as the process started: mlflow.set_tracking_uri() (called by Lightning's
# logger) exports the variable in-process, which would send the next run here to the last store.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def resolve_tracking_uri(store_dir: str | Path, uri: str | None = None) -> str:
    if uri:
        return uri
    if USER_TRACKING_URI:
        return USER_TRACKING_URI
    folder = Path(store_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def make_mlflow_logger(
    experiment_name: str,
    store_dir: str,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    log_model: bool = True,
    tags: dict | None = None,
    parent_run_id: str | None = None,
    run_id_file: str | None = None,
    synchronous: bool | None = None,
    register_as: str | None = None,
):
    """A Lightning MLFlowLogger; artifacts of an embedded store sit beside its database.
    ``log_model``: after testing, the tested checkpoint becomes the run's model (tracking/models.py;
    Lightning's own checkpoint upload stays off, so ``last.ckpt``, which nobody tested, never goes);
    ``register_as`` also registers it under that name in the Model Registry.
    ``parent_run_id`` nests the run under another (a hyperparameter search's trials);
    ``run_id_file``, when it exists, names the run to continue (a resumed training);
    ``synchronous=False`` queues metrics and params for MLflow's background writer instead of
    waiting for the store at every call (ending the run waits for them; None: MLflow's default,
    blocking)."""
    from medweave.tracking.run_logger import ResumableMLFlowLogger

    uri = resolve_tracking_uri(store_dir, tracking_uri)
    if synchronous is False:
        # MLflow's writer otherwise waits up to a second for the next queued write before it sees
        # that the run ends, and every finalize waited that long. Buffering (what queues within a
        # second goes in one write) lets the run's end wake it at once; a value the user set stays.
        os.environ.setdefault("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS", "1")
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    # Every rank builds a logger, and building one opens the store: ranks that start together
    # (srun, torchrun) would race to create a new SQLite store's tables.
    lock = (
        FileLock(uri.removeprefix("sqlite:///") + ".lock") if uri.startswith("sqlite:///") else nullcontext()
    )
    with lock:
        return ResumableMLFlowLogger(
            experiment_name=experiment_name,
            run_name=run_name,
            tracking_uri=uri,
            tags=dict(tags or {}) | ({"mlflow.parentRunId": parent_run_id} if parent_run_id else {}),
            log_model=False,
            artifact_location=artifacts,
            run_id_file=run_id_file,
            synchronous=synchronous,
            log_tested=log_model,
            register_as=register_as,
        )


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as flat ``a.b.c`` params (lists as strings), private keys left out."""
    flat: dict[str, str] = {}

    def walk(node, prefix: str) -> None:
        if prefix in PRIVATE_KEYS:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = str(node)[:500]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def log_run_config(loggers: list, cfg: DictConfig, output_dir: Path, extra: dict) -> None:
    """Params, the resolved config as an artifact, and parameter counts, on each MLflow logger."""
    from lightning.pytorch.loggers import MLFlowLogger

    resolved = output_dir / "config_resolved.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for logger in loggers:
        logger.log_hyperparams({**flat_params(cfg), **extra})
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifact(logger.run_id, str(resolved))
