"""End to end on the tiny sandbox cohort: train (debug=smoke) -> MLflow run -> eval."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medweave.errors import MedweaveError

pytestmark = pytest.mark.slow


def mlflow_client(log_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{(log_dir / 'mlflow' / 'mlflow.db').resolve()}")


def only_run(client, name="medweave"):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    return runs


def all_artifacts(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += all_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def assert_run_holds_every_figure(run, summary: dict) -> None:
    """Every figure of evaluation.json is a test/ metric of the run with the same value (NaN, an
    undefined figure, is left out), and the run's test/ metrics are those figures (and the loss)."""
    from medweave.evaluation.summary import metric_label

    expected = {}

    def add(name, value):
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            expected[f"test/{name}"] = float(value)

    def add_metrics(base, metrics):
        for name, entry in metrics.items():
            for key, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
                add(f"{base}{name}{suffix}", entry[key])

    add_metrics("", summary["overall"])
    add("n", summary["n"])
    add("events", summary["events"])
    for group, entries in summary["groups"].items():
        for label, entry in entries.items():
            base = f"by_{group}/{metric_label(label)}/"
            add(f"{base}n", entry["n"])
            add(f"{base}events", entry["events"])
            add_metrics(base, entry.get("metrics", {}))
    for section in ("attribution", "oracle"):
        for key, value in summary.get(section, {}).items():
            for name, v in value.items() if isinstance(value, dict) else [(None, value)]:
                add(f"{section}/{key}/{name}" if name else f"{section}/{key}", v)
    logged = run.data.metrics
    assert len(expected) > 10
    assert not sorted(set(expected) - set(logged)), "figures missing from the MLflow run"
    assert {k: logged[k] for k in expected if logged[k] != expected[k]} == {}
    assert {k for k in logged if k.startswith("test/")} - set(expected) <= {"test/loss"}


def test_train_logs_everything_to_mlflow_then_eval(smoke_cfg, tmp_path, tiny_cohort):
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose_run

    cfg = smoke_cfg()
    value = train(cfg)
    assert 0.0 <= value <= 1.0  # optimized_metric (val/auroc) returned for sweepers

    client = mlflow_client(tmp_path / "logs")
    [run] = only_run(client)
    metrics, params = run.data.metrics, run.data.params
    for key in ("test/auroc", "test/auprc", "val/auroc", "val/auprc", "train/loss_epoch"):
        assert key in metrics, key
        assert metrics[key] == metrics[key]  # not NaN
    history = client.get_metric_history(run.info.run_id, "val/auroc")
    assert len(history) == cfg.trainer.max_epochs  # one value per epoch
    assert value == pytest.approx(max(h.value for h in history))  # the best epoch, for sweepers
    assert params["data.modalities"] == "['ehr_codes', 'text', 'image', 'genomics']"
    assert params["model.fusion._target_"].endswith("AttentionFusion")
    assert int(params["params/total"]) > 0
    artifacts = all_artifacts(client, run.info.run_id)
    assert "config_resolved.yaml" in artifacts
    assert any(a.endswith(".ckpt") for a in artifacts), artifacts

    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_run(
        "eval", [f"ckpt_path={ckpt}", f"data.root={tiny_cohort}"], tmp_path / "logs", tmp_path / "eval"
    )
    results = evaluate(eval_cfg)
    assert 0.0 <= results["test/auroc"] <= 1.0
    runs = only_run(client)
    assert len(runs) == 2 and runs[0].data.params["ckpt_path"] == str(ckpt)
    assert abs(runs[0].data.metrics["test/auroc"] - results["test/auroc"]) < 1e-6

    # Predictions: the run's own file, not MLflow; the logged metric is what sklearn gets from it.
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    table = predict_table(ckpt, tiny_cohort, tmp_path, "splits=[tuning,held_out]")
    splits = pq.read_table(tiny_cohort / "metadata/subject_splits.parquet").to_pandas()
    assert sorted(table.subject_id) == sorted(splits[splits.split.isin(["tuning", "held_out"])].subject_id)
    held = table[table.split == "held_out"]
    assert abs(roc_auc_score(held.target, held.score) - results["test/auroc"]) < 1e-6
    assert len(only_run(client)) == 2  # predict logged nothing


@pytest.mark.parametrize("modalities", [["image"], ["ehr_codes", "text"], ["genomics"]])
def test_single_and_pair_baselines(smoke_cfg, modalities, tmp_path):
    from medweave.cli.train import train

    cfg = smoke_cfg(f"data.modalities=[{','.join(modalities)}]", "logger=csv", "model/fusion=concat")
    train(cfg)
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


FUSIONS = sorted(p.stem for p in (Path(__file__).parents[2] / "configs" / "model" / "fusion").glob("*.yaml"))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_trains_with_missing_modalities(smoke_cfg, fusion, tiny_cohort):
    """The tiny cohort has subjects missing 0 to 3 modalities; every fusion must train on it."""
    import pyarrow.parquet as pq

    from medweave.cli.train import train

    truth = pq.read_table(tiny_cohort / "ground_truth/risk.parquet").to_pandas()
    missing = 3 - truth[["has_text", "has_image", "has_genomics"]].sum(1)
    assert set(missing) == {0, 1, 2, 3}

    value = train(smoke_cfg("logger=csv", f"model/fusion={fusion}"))
    assert 0.0 <= value <= 1.0


def test_seed_makes_runs_repeatable(smoke_cfg, tmp_path):
    from medweave.cli.train import train

    a = train(smoke_cfg("logger=csv", "data.modalities=[ehr_codes,genomics]"))
    b = train(smoke_cfg("logger=csv", "data.modalities=[ehr_codes,genomics]"))
    assert a == b


def test_checkpoint_from_another_model_is_refused(smoke_cfg, tmp_path, tiny_cohort):
    import torch

    from medweave.cli.eval import load_checkpoint, restore_model
    from medweave.cli.train import train

    train(smoke_cfg("logger=csv", "data.modalities=[ehr_codes]"))
    path = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    ckpt = load_checkpoint(str(path))
    ckpt["medweave"]["config"]["model"]["dim"] = 8  # the config no longer matches the weights
    with pytest.raises(MedweaveError, match="weights do not fit the model"):
        restore_model(ckpt, str(path), {"ehr_codes": {"vocab_size": 100}})
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(MedweaveError, match="not a medweave checkpoint"):
        load_checkpoint(str(foreign))
    with pytest.raises(MedweaveError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.ckpt"))


def test_the_run_model_is_the_tested_checkpoint_and_predicts_from_the_registry(smoke_cfg, tmp_path, tiny_cohort):
    """The MLflow model is the checkpoint that was tested (best by the monitor), byte for byte;
    registered, it predicts what the checkpoint file predicts; last.ckpt never leaves the disk."""
    import hashlib

    from medweave import __version__
    from medweave.cli.train import train

    train(smoke_cfg("logger.mlflow.register_as=cvd-risk", "trainer.max_epochs=3"))
    client = mlflow_client(tmp_path / "logs")
    [run] = only_run(client)
    tags, run_id = run.data.tags, run.info.run_id
    tested = tmp_path / "run" / "checkpoints" / tags["model.checkpoint"]
    assert tested.is_file() and tested.name.startswith("epoch_")
    best = max(h.value for h in client.get_metric_history(run_id, "val/auroc"))
    assert float(tags["model.monitor_value"]) == pytest.approx(best) and tags["model.monitor"] == "val/auroc"
    artifacts = all_artifacts(client, run_id)
    assert {f"model/{tested.name}", "model/model.json"} <= set(artifacts)
    assert not [a for a in artifacts if a.endswith(".ckpt") and a != f"model/{tested.name}"], artifacts

    def digest(path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    downloaded = client.download_artifacts(run_id, f"model/{tested.name}", str(tmp_path / "download"))
    assert digest(downloaded) == digest(tested)
    version = client.get_model_version("cvd-risk", "1")
    assert version.run_id == run_id and tags["model.registered"] == "cvd-risk/1"
    assert version.tags["task"] == "cvd_onset_1y" and version.tags["medweave_version"] == __version__
    assert version.tags["cohort_fingerprint"] == tags["model.cohort_fingerprint"] != "None"

    from_registry = predict_table("models:/cvd-risk/1", tiny_cohort, tmp_path)
    from_run_id = predict_table(run_id, tiny_cohort, tmp_path)
    from_file = predict_table(tested, tiny_cohort, tmp_path)
    assert len(from_file) > 0
    assert (from_registry.score.to_numpy() == from_file.score.to_numpy()).all()
    assert (from_run_id.score.to_numpy() == from_file.score.to_numpy()).all()
    with pytest.raises(MedweaveError, match="not found in the MLflow store"):
        predict_table("models:/cvd-risk/7", tiny_cohort, tmp_path)


def predict_table(ckpt, cohort, tmp_path, *overrides):
    """medweave-predict on a checkpoint, in-process, as a DataFrame."""
    import pyarrow.parquet as pq

    from medweave.cli.predict import predict
    from tests.conftest import compose_run

    cfg = compose_run(
        "predict",
        [f"ckpt_path={ckpt}", f"data.root={cohort}", *overrides],
        tmp_path / "logs",
        tmp_path / "predict",
    )
    return pq.read_table(predict(cfg)).to_pandas()


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A CLI run in a child process. In-process MLflow runs of other tests export
    MLFLOW_TRACKING_URI, which would send the child's run elsewhere: drop it."""
    import os

    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, **env},
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["data.root=/definitely/not/here"], "data.root '/definitely/not/here' does not exist"),
        (["data.root=/tmp", "data.modalities=[imaging]"], "unknown modality 'imaging'"),
        ([], "data.root is not set"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message, tmp_path):
    proc = run_cli("medweave.cli.train", "debug=smoke", f"paths.log_dir={tmp_path}", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_sandbox_train_eval(tmp_path):
    """The README's path through the real entry points (sandbox -> train -> eval)."""
    proc = run_cli(
        "medweave.cli.sandbox",
        f"out={tmp_path / 'c'}",
        "n_subjects=60",
        "n_variants=40",
        "image_size=32",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "oracle AUROC" in proc.stdout + proc.stderr
    proc = run_cli("medweave.cli.train", "debug=smoke", f"data.root={tmp_path / 'c'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = next((tmp_path / "logs" / "debug" / "runs").glob("*/checkpoints/last.ckpt"))
    proc = run_cli("medweave.cli.eval", f"ckpt_path={ckpt}", f"data.root={tmp_path / 'c'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/auroc" in proc.stdout + proc.stderr


def test_cli_ddp_on_cpu_gives_one_mlflow_run(tiny_cohort, tmp_path):
    """Two gloo processes: one MLflow run, metrics synced across ranks, one set of checkpoints."""
    proc = run_cli(
        "medweave.cli.train",
        "debug=smoke",
        f"data.root={tiny_cohort}",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        cwd=tmp_path,
        OMP_NUM_THREADS="1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow_client(tmp_path / "logs")
    [run] = only_run(client)
    assert 0.0 <= run.data.metrics["test/auroc"] <= 1.0
    assert run.data.params["trainer.strategy"] == "ddp"
    assert len(list((tmp_path / "logs" / "debug" / "runs").glob("*/checkpoints/last.ckpt"))) == 1


def test_second_disease_trains_from_its_own_labels(smoke_cfg, tmp_path, tiny_cohort):
    import pyarrow.parquet as pq

    from medweave.cli.train import train
    from medweave.data.datamodule import CohortDataModule

    cfg = smoke_cfg("task=t1d_onset_1y", "data.modalities=[ehr_codes]")
    train(cfg)
    [run] = only_run(mlflow_client(tmp_path / "logs"))
    assert run.data.params["task.name"] == "t1d_onset_1y" and "test/auroc" in run.data.metrics

    from hydra.utils import instantiate

    datamodule: CohortDataModule = instantiate(cfg.data)
    datamodule.setup()
    t1d = pq.read_table(tiny_cohort / "labels/t1d_onset_1y.parquet").to_pandas().set_index("subject_id")
    cvd = pq.read_table(tiny_cohort / "labels/cvd_onset_1y.parquet").to_pandas().set_index("subject_id")
    ids = datamodule.cohort.subject_id
    assert (t1d.boolean_value != cvd.boolean_value).any()
    assert (datamodule.cohort.target == t1d.boolean_value.loc[ids].to_numpy()).all()


@pytest.mark.parametrize("task", ["cvd_survival", "cvd_survival_discrete"])
def test_survival_task_trains_and_predictions_reproduce_the_c_index(smoke_cfg, task, tmp_path, tiny_cohort):
    import pyarrow.parquet as pq

    from medweave.cli.train import train
    from medweave.metrics.survival import harrell_c

    import json

    train(smoke_cfg(f"task={task}"))
    [run] = only_run(mlflow_client(tmp_path / "logs"))
    logged = run.data.metrics["test/c_index"]
    assert 0.0 <= logged <= 1.0 and "val/c_index" in run.data.metrics and "test/auroc" not in run.data.metrics
    assert_run_holds_every_figure(run, json.loads((tmp_path / "run/evaluation/evaluation.json").read_text()))

    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    table = predict_table(ckpt, tiny_cohort, tmp_path)
    labels = pq.read_table(tiny_cohort / "labels/cvd_survival.parquet").to_pandas().set_index("subject_id")
    truth = labels.loc[table.subject_id]
    assert (table.target.to_numpy() == truth.boolean_value.to_numpy()).all()
    assert table.time.to_numpy() == pytest.approx(truth.float_value.to_numpy())
    assert harrell_c(table.target.astype(bool), table.time, table.score) == pytest.approx(logged, abs=1e-6)
    curves = table.filter(like="survival_")  # bin edges (discrete) or survival_times (Cox): the same days
    assert list(curves.columns) == [f"survival_{d}d" for d in (365, 730, 1095, 1461, 1826)]
    assert (curves.diff(axis=1).iloc[:, 1:] <= 1e-7).all().all()  # S(t) never rises


@pytest.mark.parametrize(
    ("task", "metric", "columns"),
    [
        ("first_diagnosis_1y", "auroc", {"score_none", "score_cvd"}),
        ("onsets_1y", "auroc", {"score_cvd_onset_1y", "target_t1d_onset_1y"}),
        ("hba1c_1y", "r2", set()),
    ],
)
def test_other_task_types_train_and_report_what_sklearn_computes(
    smoke_cfg, task, metric, columns, tmp_path, tiny_cohort
):
    """multiclass, multilabel, regression: torchmetrics during training and scikit-learn in the
    report agree on the held-out split; predictions carry one column per class or label."""
    import json

    from medweave.cli.train import train

    train(smoke_cfg(f"task={task}", "trainer.limit_test_batches=null"))
    client = mlflow_client(tmp_path / "logs")
    [run] = only_run(client)
    summary = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    assert_run_holds_every_figure(run, summary)
    # The trainer's test pass (torchmetrics) logged first, the report (scikit-learn) last, at one step.
    history = client.get_metric_history(run.info.run_id, f"test/{metric}")
    first, last = sorted(history, key=lambda m: m.timestamp)
    assert first.step == last.step and last.value == summary["overall"][metric]["value"]
    assert first.value == pytest.approx(last.value, abs=1e-5)
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    table = predict_table(ckpt, tiny_cohort, tmp_path)
    assert columns <= set(table.columns) and len(table) == summary["n"]
    if task == "hba1c_1y":  # the score is in the label's unit (mmol/mol), not a z-score
        assert 20 < table.score.mean() < 60


def test_predict_gives_cox_survival_curves_and_per_subject_shapley(smoke_cfg, tmp_path, tiny_cohort):
    import numpy as np

    from medweave.cli.train import train

    train(smoke_cfg("task=cvd_survival"))
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    table = predict_table(ckpt, tiny_cohort, tmp_path, "attribution=true")
    curves = table[[f"survival_{d}d" for d in (365, 730, 1095, 1461, 1826)]].to_numpy()
    assert ((curves > 0) & (curves <= 1)).all() and (np.diff(curves, axis=1) <= 1e-9).all()
    # a higher log hazard ratio means a lower survival curve
    order = np.argsort(table.score.to_numpy())
    assert curves[order[-1], -1] <= curves[order[0], -1]
    shapley = table[[f"shapley_{m}" for m in ("ehr_codes", "text", "image", "genomics")]]
    np.testing.assert_allclose(shapley.sum(1) + table.shapley_none, table.score, atol=1e-4)  # efficiency
    assert (shapley.shapley_image[~table.present_image] == 0).all()  # absent: no contribution
