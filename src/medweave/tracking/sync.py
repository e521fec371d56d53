"""Copy runs from a local MLflow store to the team server, for compute nodes that cannot reach it.

Such nodes log to an embedded store (logger=mlflow: ``mlflow.db`` plus ``artifacts/``); this copies every
run afterwards with MlflowClient alone: experiment (by name), run name, params, tags, full metric
histories, start/end time, status and artifacts.

Each copy carries ``medweave.synced_from=<local run id>``, so syncing again is safe. A copy is skipped
when it has ended (FINISHED, FAILED, KILLED) with the local run's status and end time. Any other copy
(the local run had not ended, was preempted and resumed since, or an earlier sync was cut off) is
updated in place rather than deleted and copied again: its run id stays, so children already synced keep
their parent link. An update adds the params and metric points the copy lacks, sets the tags again,
logs the artifacts again and sets the status last, so a copy that says FINISHED is complete.
"""

from __future__ import annotations

import math
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

SYNCED_FROM = "medweave.synced_from"
FINAL = ("FINISHED", "FAILED", "KILLED")
# MLflow's own tags kept on the copy; the server sets the other mlflow.* tags itself.
KEEP_SYSTEM_TAGS = ("mlflow.runName", "mlflow.user", "mlflow.note.content")
PARENT = "mlflow.parentRunId"
METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
PARAMS_TAGS_PER_BATCH = 100


class SyncError(Exception):
    """A problem the user fixes (no store, no server): the CLI prints it on one line."""


@dataclass
class SyncSummary:
    copied: int = 0
    updated: int = 0
    skipped: int = 0


def local_store_uri(source: str) -> str:
    """The sqlite URI of a local store given as a folder with ``mlflow.db``, the file, or a sqlite URI.
    Checked first, because MLflow would quietly create an empty database where none is."""
    path = Path(source.removeprefix("sqlite:///")).expanduser()
    if path.is_dir():
        path = path / "mlflow.db"
    if not path.is_file():
        raise SyncError(
            f"no MLflow store in {source} (expected a folder holding mlflow.db, or sqlite:///FILE)"
        )
    return f"sqlite:///{path.resolve()}"


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail fast: MlflowClient retries a dead server for minutes before it gives up."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as reply:
            reply.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SyncError(f"the MLflow server at {uri} does not answer ({reason})") from None


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _copied_tags(run, parent_copy: str | None) -> dict[str, str]:
    tags = {
        key: value
        for key, value in run.data.tags.items()
        if not key.startswith("mlflow.") or key in KEEP_SYSTEM_TAGS or key.startswith("mlflow.source.")
    }
    tags.pop(PARENT, None)
    if parent_copy:
        tags[PARENT] = parent_copy
    tags[SYNCED_FROM] = run.info.run_id
    return tags


def _point(metric) -> tuple:
    value = "nan" if math.isnan(metric.value) else metric.value
    return metric.step, metric.timestamp, value


def _same_end(copy, run) -> bool:
    """The copy has ended as the local run did: nothing left to copy."""
    ended = copy.info.status in FINAL and copy.info.status == run.info.status
    return ended and copy.info.end_time == run.info.end_time


def _local_runs(local, experiments: list[str] | None) -> list:
    """Active runs of the chosen experiments (all by default) and their parents, parents first."""
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    if experiments:
        chosen = []
        for name in experiments:
            found = local.get_experiment_by_name(name)
            if found is None:
                raise SyncError(f"no experiment {name!r} in the local store")
            chosen.append(found)
    else:
        chosen = local.search_experiments(view_type=ViewType.ACTIVE_ONLY)
    ids, runs, token = [e.experiment_id for e in chosen], [], None
    while ids:
        page = local.search_runs(ids, max_results=1000, page_token=token, order_by=["attributes.start_time"])
        runs += page
        token = page.token
        if not token:
            break
    by_id = {run.info.run_id: run for run in runs}
    for run in list(runs):  # a nested run brings its parents along, wherever they are
        parent = run.data.tags.get(PARENT)
        while parent and parent not in by_id:
            try:
                found = local.get_run(parent)
            except MlflowException:
                found = None
            if found is None or found.info.lifecycle_stage == "deleted":
                break  # the copy stays top level
            by_id[parent] = found
            runs.append(found)
            parent = found.data.tags.get(PARENT)

    def depth(run) -> int:
        parent = by_id.get(run.data.tags.get(PARENT, ""))
        return 0 if parent is None else 1 + depth(parent)

    return sorted(runs, key=depth)


class _Sync:
    """One sync: the two clients, and the copies found or made so far (children look up their parent)."""

    def __init__(self, source_uri: str, target_uri: str):
        from mlflow import MlflowClient

        self.local = MlflowClient(tracking_uri=source_uri)
        self.server = MlflowClient(tracking_uri=target_uri)
        self.experiments: dict[str, str] = {}  # name -> server experiment id
        self.copies: dict[str, dict] = {}  # server experiment id -> {local run id: copy}
        self.copy_ids: dict[str, str] = {}  # local run id -> copy's run id

    def experiment(self, local_experiment_id: str) -> str:
        """The server's experiment of that name, created when missing, with its copies so far."""
        experiment = self.local.get_experiment(local_experiment_id)
        if experiment.name not in self.experiments:
            found = self.server.get_experiment_by_name(experiment.name)
            if found is not None and found.lifecycle_stage == "deleted":
                raise SyncError(f"experiment {experiment.name!r} is deleted on the server: restore it first")
            if found is None:
                tags = {k: v for k, v in experiment.tags.items() if not k.startswith("mlflow.")}
                target = self.server.create_experiment(experiment.name, tags=tags)
            else:
                target = found.experiment_id
            self.experiments[experiment.name] = target
            self.copies[target] = self.existing_copies(target)
            self.copy_ids.update({k: v.info.run_id for k, v in self.copies[target].items()})
        return self.experiments[experiment.name]

    def existing_copies(self, experiment_id: str) -> dict:
        copies, token = {}, None
        while True:
            page = self.server.search_runs(
                [experiment_id], f"tags.`{SYNCED_FROM}` LIKE '%'", max_results=1000, page_token=token
            )
            copies.update({run.data.tags[SYNCED_FROM]: run for run in page})
            token = page.token
            if not token:
                return copies

    def run(self, run) -> str:
        """Copy or update one run; returns what happened, as the report line's verb."""
        target = self.experiment(run.info.experiment_id)
        copy = self.copies[target].get(run.info.run_id)
        if copy is not None and _same_end(copy, run):
            return "skipped"
        tags = _copied_tags(run, self.copy_ids.get(run.data.tags.get(PARENT, "")))
        if copy is None:
            first = {k: v for k, v in tags.items() if k != "mlflow.runName"}
            made = self.server.create_run(target, run.info.start_time, first, run.info.run_name)
            copy = self.server.get_run(made.info.run_id)
            verb = "copied"
        else:
            verb = "updated"
        self.copy_ids[run.info.run_id] = copy.info.run_id
        self.log_all(run, copy, tags)
        if run.info.status in FINAL:  # last: a copy that says FINISHED is complete
            self.server.set_terminated(copy.info.run_id, run.info.status, end_time=run.info.end_time)
        elif copy.info.status != "RUNNING":  # preempted (KILLED) when last synced, resumed since
            self.server.update_run(copy.info.run_id, status="RUNNING")
        return verb

    def log_all(self, run, copy, tags: dict[str, str]) -> None:
        """Params, tags and metric points the copy lacks, in batches MLflow accepts, then the artifacts."""
        from mlflow.entities import Metric, Param, RunTag

        copy_id = copy.info.run_id
        params = [Param(k, v) for k, v in run.data.params.items() if k not in copy.data.params]
        for chunk in _chunks(params, PARAMS_TAGS_PER_BATCH):
            self.server.log_batch(copy_id, params=chunk)
        for chunk in _chunks([RunTag(k, v) for k, v in tags.items()], PARAMS_TAGS_PER_BATCH):
            self.server.log_batch(copy_id, tags=chunk)
        points = []
        for key in run.data.metrics:
            known = self.server.get_metric_history(copy_id, key) if key in copy.data.metrics else []
            logged = {_point(m) for m in known}
            history = self.local.get_metric_history(run.info.run_id, key)
            # Bare points: a local run id or logged-model id means nothing on the server.
            points += [Metric(key, m.value, m.timestamp, m.step) for m in history if _point(m) not in logged]
        for chunk in _chunks(points, METRICS_PER_BATCH):
            self.server.log_batch(copy_id, metrics=chunk)
        self.copy_artifacts(run, copy_id)

    def copy_artifacts(self, run, copy_id: str) -> None:
        """From the local artifact folder when there is one (checkpoints are big), else downloaded."""
        from mlflow.utils.file_utils import local_file_uri_to_path

        uri = run.info.artifact_uri
        if urlparse(uri).scheme in ("", "file"):
            folder = Path(local_file_uri_to_path(uri))
            if folder.is_dir() and any(folder.iterdir()):
                self.server.log_artifacts(copy_id, str(folder))
        elif self.local.list_artifacts(run.info.run_id):
            with tempfile.TemporaryDirectory() as scratch:
                self.server.log_artifacts(
                    copy_id, self.local.download_artifacts(run.info.run_id, "", scratch)
                )


def sync_store(
    source_uri: str, target_uri: str, experiments: list[str] | None = None, say: Callable = print
) -> SyncSummary:
    """Copy the local store's runs to ``target_uri``; ``say`` gets one line per run."""
    # Else MLflow prints two "View run at" lines of its own for each run it ends on a server.
    key, before = (
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
        os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"),
    )
    os.environ[key] = "true"
    try:
        return _sync_all(_Sync(source_uri, target_uri), experiments, say)
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _sync_all(sync: _Sync, experiments: list[str] | None, say: Callable) -> SyncSummary:
    from tqdm import tqdm

    runs = _local_runs(sync.local, experiments)
    summary = SyncSummary()
    # A bar for more than a few runs, on a terminal only (None: tqdm's own tty check).
    with tqdm(total=len(runs), unit="run", desc="sync", leave=False, disable=len(runs) <= 5 or None) as bar:
        for run in runs:
            verb = sync.run(run)
            setattr(summary, verb, getattr(summary, verb) + 1)
            name = f"{sync.local.get_experiment(run.info.experiment_id).name}/{run.info.run_name}"
            copy_id = sync.copy_ids.get(run.info.run_id)
            with tqdm.external_write_mode():
                say(f"{verb:7} {name} ({run.info.run_id} -> {copy_id}, {run.info.status})")
            bar.update()
    return summary
