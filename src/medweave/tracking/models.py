"""The run's model in MLflow is the checkpoint that was tested, and back again.

A training run logs the checkpoint it tested (the best by the task's monitor) byte for byte
under the artifact path ``model/``, beside ``model.json``: which epoch, which monitored value,
the task, the cohort fingerprint and medweave's version (the same as run tags, ``model.*``).
``last.ckpt`` stays on disk, for resuming only. With ``register_as`` the model also becomes a
new version of that name in the MLflow Model Registry, tagged alike.

``fetch_checkpoint`` turns ``models:/<name>/<version>``, ``models:/<name>@<alias>``,
``runs:/<run id>/model`` or a bare run id into a local checkpoint file, so medweave-predict and
medweave-eval work from the registry alone.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

from medweave.errors import MedweaveError

log = logging.getLogger("medweave")

MODEL_ARTIFACT = "model"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def log_tested_model(logger, ckpt_path: str | Path, info: dict, register_as: str | None = None) -> dict:
    """Upload the tested checkpoint and its description to ``logger``'s run; register it when
    asked. Returns the description (plus ``registered``: name and version)."""
    from mlflow.exceptions import MlflowException

    client, run_id = logger.experiment, logger.run_id
    ckpt_path = Path(ckpt_path)
    info = {"checkpoint": ckpt_path.name, **info}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.json").write_text(json.dumps(info, indent=2, default=str))
        client.log_artifact(run_id, str(Path(tmp) / "model.json"), MODEL_ARTIFACT)
    client.log_artifact(run_id, str(ckpt_path), MODEL_ARTIFACT)
    tags = {f"model.{k}": str(v) for k, v in info.items()}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    if register_as:
        try:
            client.create_registered_model(register_as)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        version = client.create_model_version(
            register_as, source=source, run_id=run_id, tags={k: str(v) for k, v in info.items()}
        )
        info["registered"] = {"name": register_as, "version": int(version.version)}
        client.set_tag(run_id, "model.registered", f"{register_as}/{version.version}")
        log.info("Registered the tested model as %s version %s", register_as, version.version)
    return info


def is_model_reference(reference: str) -> bool:
    """An MLflow model URI or a run id, rather than a file path."""
    return reference.startswith(("models:/", "runs:/")) or bool(_RUN_ID.match(reference))


def model_uri(reference: str) -> str:
    """An MLflow URI for what a user may write: a models:/ or runs:/ URI, or a run id."""
    if reference.startswith(("models:/", "runs:/")):
        return reference
    if _RUN_ID.match(reference):
        return f"runs:/{reference}/{MODEL_ARTIFACT}"
    raise MedweaveError(
        f"'{reference}': expected models:/<name>/<version>, models:/<name>@<alias>, "
        "runs:/<run id>/model or a 32-character run id"
    )


def _artifact_uri(client, uri: str) -> str:
    """Where a models:/ URI's files are (asking this client's registry, not a global one); a
    runs:/ URI as it is."""
    if not uri.startswith("models:/"):
        return uri
    name, _, version = uri.removeprefix("models:/").rpartition("/")
    if "@" in uri.removeprefix("models:/") and not name:
        name, _, alias = uri.removeprefix("models:/").partition("@")
        version = client.get_model_version_by_alias(name, alias).version
    if not name or not version:
        raise MedweaveError(f"'{uri}': expected models:/<name>/<version> or models:/<name>@<alias>")
    return client.get_model_version_download_uri(name, version)


def fetch_checkpoint(reference: str, tracking_uri: str, dest: str | Path) -> Path:
    """Download the model's files into ``dest`` and return its checkpoint."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    uri = model_uri(reference)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        source = _artifact_uri(client, uri)
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(dest), tracking_uri=tracking_uri
            )
        )
    except (MlflowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise MedweaveError(
            f"'{reference}': not found in the MLflow store {tracking_uri} ({first})"
        ) from None
    info_file = folder / "model.json"
    if not info_file.is_file():
        raise MedweaveError(f"'{reference}': {uri} holds no model.json; not a model logged by medweave-train")
    checkpoint = folder / json.loads(info_file.read_text())["checkpoint"]
    if not checkpoint.is_file():
        raise MedweaveError(f"'{reference}': {uri} lacks its checkpoint {checkpoint.name}")
    return checkpoint
