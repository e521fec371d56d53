"""The team MLflow server (PostgreSQL + shared artifact folder) and the offline sync into it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def history(mlflow, run_id: str, key: str) -> list[tuple]:
    return sorted((m.step, m.timestamp, m.value) for m in mlflow.get_metric_history(run_id, key))


def copies(server, experiment: str) -> dict:
    """The server's runs of an experiment, by the local run id they were copied from."""
    found = server.get_experiment_by_name(experiment)
    runs = server.search_runs([found.experiment_id]) if found else []
    by_source = {}
    for run in runs:
        assert run.data.tags["medweave.synced_from"] not in by_source, "a run was copied twice"
        by_source[run.data.tags["medweave.synced_from"]] = run
    return by_source


def sync(capsys, local_dir, uri) -> list[str]:
    from medweave.cli.mlflow_sync import main

    assert main(["--from", str(local_dir), "--to", uri]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_logger_run_reaches_postgres_and_shared_artifacts(mlflow_server, tmp_path, monkeypatch):
    import psycopg

    from medweave.tracking.mlflow import make_mlflow_logger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # restored: Lightning exports it in-process
    logger = make_mlflow_logger(
        "team", str(tmp_path / "unused"), run_name="on-server", tracking_uri=mlflow_server.uri
    )
    logger.log_hyperparams({"model.dim": 32, "optim.lr": 0.001})
    for step in range(3):
        logger.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    note = tmp_path / "notes.txt"
    note.write_text("logged through the server\n")
    logger.experiment.log_artifact(logger.run_id, str(note))
    logger.finalize("success")

    run = client(mlflow_server.uri).get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "on-server"
    assert run.data.params == {"model.dim": "32", "optim.lr": "0.001"}
    assert [v for _, _, v in history(client(mlflow_server.uri), run.info.run_id, "train/loss")] == [
        1,
        0.5,
        1 / 3,
    ]
    with psycopg.connect(mlflow_server.database_uri()) as db:  # really in PostgreSQL, not a file store
        rows = db.execute("SELECT key, value FROM params WHERE run_uuid = %s", (run.info.run_id,)).fetchall()
    assert dict(rows) == run.data.params
    # --no-serve-artifacts: the client wrote the file straight into the shared folder.
    assert run.info.artifact_uri.startswith(str(mlflow_server.artifacts))
    [on_disk] = mlflow_server.artifacts.rglob("notes.txt")
    assert run.info.run_id in on_disk.parts and on_disk.read_text() == "logged through the server\n"
    assert not (tmp_path / "unused").exists()


def offline_store(folder):
    """A compute node's embedded store: a search with one nested trial, and a run still going."""
    from mlflow.entities import Metric

    local = client(f"sqlite:///{folder / 'mlflow.db'}")
    t0 = int(time.time() * 1000) - 60_000
    search = local.create_experiment("offline-search", artifact_location=(folder / "artifacts").as_uri())
    other = local.create_experiment("offline-other", artifact_location=(folder / "artifacts").as_uri())

    parent = local.create_run(search, start_time=t0, tags={"team": "imaging"}, run_name="search").info.run_id
    local.log_param(parent, "sampler", "tpe")
    # 1,500 points: more than one log_batch on the way over.
    points = [Metric("lr", 0.1 / (s + 1), t0 + s, s) for s in range(1500)]
    local.log_batch(parent, metrics=points)
    report = folder / "report"
    report.mkdir()
    (report / "summary.txt").write_text("best trial: 0\n")
    local.log_artifacts(parent, str(report), "report")
    local.set_terminated(parent, "FINISHED", end_time=t0 + 50_000)

    child = local.create_run(
        search, start_time=t0 + 1000, tags={"mlflow.parentRunId": parent, "trial": "0"}, run_name="trial-0"
    ).info.run_id
    local.log_param(child, "model.dim", "64")
    local.log_batch(child, metrics=[Metric("val/auroc", 0.6 + s / 100, t0 + 2000 + s, s) for s in range(4)])
    local.set_terminated(child, "FAILED", end_time=t0 + 9000)

    running = local.create_run(other, start_time=t0 + 20_000, run_name="still-training").info.run_id
    local.log_param(running, "epochs", "10")
    local.log_batch(
        running, metrics=[Metric("train/loss", 1.0 - s / 10, t0 + 21_000 + s, s) for s in range(3)]
    )
    return local, {"parent": parent, "child": child, "running": running}


def assert_same(local, server, local_id: str, copy) -> None:
    run = local.get_run(local_id)
    assert copy.info.run_name == run.info.run_name
    assert copy.info.status == run.info.status
    assert (copy.info.start_time, copy.info.end_time) == (run.info.start_time, run.info.end_time)
    assert copy.data.params == run.data.params
    for key in run.data.metrics:
        assert history(server, copy.info.run_id, key) == history(local, local_id, key), key
    assert set(copy.data.metrics) == set(run.data.metrics)
    user_tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    assert user_tags.items() <= copy.data.tags.items()


@pytest.mark.slow
def test_offline_store_syncs_once_and_completes_unfinished_runs(mlflow_server, tmp_path, capsys):
    from mlflow.entities import Metric

    local, ids = offline_store(tmp_path / "node")
    server = client(mlflow_server.uri)

    lines = sync(capsys, tmp_path / "node", mlflow_server.uri)
    assert len(lines) == 4 and all(line.startswith("copied") for line in lines[:3]), lines
    assert lines[-1].startswith("3 copied, 0 updated, 0 skipped"), lines
    search, other = copies(server, "offline-search"), copies(server, "offline-other")
    assert set(search) == {ids["parent"], ids["child"]} and set(other) == {ids["running"]}
    for name, copy in [("parent", search[ids["parent"]]), ("child", search[ids["child"]])]:
        assert_same(local, server, ids[name], copy)
    assert_same(local, server, ids["running"], other[ids["running"]])
    assert other[ids["running"]].info.status == "RUNNING"
    # The trial hangs under the copy of its search, not under the local run id.
    assert search[ids["child"]].data.tags["mlflow.parentRunId"] == search[ids["parent"]].info.run_id
    # The artifact lies in the shared folder, under the copy.
    copy_id = search[ids["parent"]].info.run_id
    assert [a.path for a in server.list_artifacts(copy_id, "report")] == ["report/summary.txt"]
    [summary] = mlflow_server.artifacts.rglob("summary.txt")
    assert copy_id in summary.parts and summary.read_text() == "best trial: 0\n"

    # Again: finished runs are skipped, the running one brought up to date, nothing doubled.
    lines = sync(capsys, tmp_path / "node", mlflow_server.uri)
    assert lines[-1].startswith("0 copied, 1 updated, 2 skipped"), lines
    assert copies(server, "offline-search").keys() == search.keys()
    assert_same(local, server, ids["running"], copies(server, "offline-other")[ids["running"]])

    # The run ends on the node with more metrics; the next sync completes the same copy.
    t = local.get_run(ids["running"]).info.start_time
    local.log_batch(
        ids["running"], metrics=[Metric("train/loss", 0.5 - s / 100, t + 5000 + s, s) for s in range(3, 8)]
    )
    local.log_metric(ids["running"], "test/auroc", 0.81, timestamp=t + 9000, step=7)
    local.set_terminated(ids["running"], "FINISHED", end_time=t + 10_000)
    lines = sync(capsys, tmp_path / "node", mlflow_server.uri)
    assert lines[-1].startswith("0 copied, 1 updated, 2 skipped"), lines
    [(source, copy)] = copies(server, "offline-other").items()
    assert source == ids["running"] and copy.info.run_id == other[ids["running"]].info.run_id
    assert copy.info.status == "FINISHED"
    assert_same(local, server, ids["running"], copy)
    assert len(history(server, copy.info.run_id, "train/loss")) == 8


def test_sync_without_a_store_or_server_says_so_in_one_line(tmp_path):
    def sync_cli(source, target):
        return subprocess.run(
            [sys.executable, "-m", "medweave.cli.mlflow_sync", "--from", str(source), "--to", target],
            capture_output=True,
            text=True,
            timeout=60,
        )

    no_store = sync_cli(tmp_path, "http://127.0.0.1:9")
    assert no_store.returncode == 2 and no_store.stdout == ""
    [line] = no_store.stderr.splitlines()
    assert "no MLflow store in" in line and str(tmp_path) in line

    (tmp_path / "mlflow.db").touch()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    no_server = sync_cli(tmp_path, f"http://127.0.0.1:{port}")
    assert no_server.returncode == 2
    [line] = no_server.stderr.splitlines()
    assert f"the MLflow server at http://127.0.0.1:{port} does not answer" in line


@pytest.mark.slow
def test_preempted_run_is_brought_up_to_date_after_it_resumes(mlflow_server, tmp_path, capsys):
    """Preemption marks a run KILLED until it resumes: an ended copy is not necessarily complete."""
    local = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = local.create_experiment("offline-preempted", artifact_location=(tmp_path / "a").as_uri())
    run_id = local.create_run(experiment, run_name="preempted").info.run_id
    local.log_metric(run_id, "loss", 1.0, step=0)
    local.set_terminated(run_id, "KILLED")
    server = client(mlflow_server.uri)
    sync(capsys, tmp_path, mlflow_server.uri)

    local.update_run(run_id, status="RUNNING")  # resumed: runs on and ends
    local.log_metric(run_id, "loss", 0.5, step=1)
    local.set_terminated(run_id, "FINISHED")
    assert sync(capsys, tmp_path, mlflow_server.uri)[-1].startswith("0 copied, 1 updated, 0 skipped")
    [(source, copy)] = copies(server, "offline-preempted").items()
    assert source == run_id
    assert_same(local, server, run_id, copy)
    assert sync(capsys, tmp_path, mlflow_server.uri)[-1].startswith("0 copied, 0 updated, 1 skipped")
