"""End to end on the tiny sandbox: medweave-pretrain (one MLflow run, resumed in place), then a
task model that starts from its checkpoint with one override, and medweave-embed over it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import compose_run

pytestmark = pytest.mark.slow


def test_pretrain_resume_then_finetune_and_embed(tiny_cohort, tmp_path):
    from mlflow.tracking import MlflowClient

    from medweave.cli.pretrain import pretrain
    from medweave.cli.train import train

    logs, run = tmp_path / "logs", tmp_path / "pretrain"
    base = ["debug=pretrain_smoke", f"data.root={tiny_cohort}", "task_name=pretrain"]
    loss = pretrain(compose_run("pretrain", base, logs, run))
    assert np.isfinite(loss)
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 6
    extras = saved["medweave"]
    assert extras["kind"] == "pretrain" and extras["objective"] == "next_event"
    assert extras["backbone"]["args"]["dim"] == 16 and len(extras["vocab"]["codes"]) > 10

    # The same command with one more epoch continues from last.ckpt, in the same MLflow run.
    pretrain(compose_run("pretrain", [*base, "trainer.max_epochs=3"], logs, run))
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 9
    client = MlflowClient(f"sqlite:///{(logs / 'mlflow' / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "medweave"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert "val/loss" in mlflow_run.data.metrics and mlflow_run.data.params["pretrain.eval_subjects"] == "cut"

    # A task model from the pretrained backbone, frozen: its backbone is the checkpoint's.
    task_run = tmp_path / "task"
    overrides = [
        "debug=smoke",
        f"data.root={tiny_cohort}",
        "data.modalities=[ehr_codes]",
        f"model.encoders.ehr_codes.pretrained={ckpt}",
        "model.encoders.ehr_codes.freeze=true",
        "evaluation.enabled=false",
        "+data.vocab_min_subjects=1000",  # no code passes in this task: only the checkpoint's are kept
    ]
    train(compose_run("train", overrides, logs, task_run))
    (best,) = (task_run / "checkpoints").glob("epoch_*.ckpt")
    task_codes = torch.load(best, map_location="cpu", weights_only=False)["medweave"]["vocab"]["codes"]
    assert len(task_codes) > 10 and set(task_codes) <= set(extras["vocab"]["codes"])
    tuned = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    pretrained = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    prefix = "encoders.ehr_codes.pretrained.backbone."
    keys = [k for k in tuned if k.startswith(prefix)]
    assert keys and all(torch.equal(tuned[k], pretrained["backbone." + k[len(prefix) :]]) for k in keys)

    from medweave.cli.embed import embed

    cfg = compose_run(
        "embed",
        [f"data.root={tiny_cohort}", "modality=ehr_codes", f"model_path={ckpt}", "data.max_events=32"],
        logs,
        tmp_path / "embed",
    )
    folder = embed(cfg)
    vectors = np.load(folder / "embeddings.npy")
    assert vectors.shape[1] == 16 and np.isfinite(vectors).all() and np.abs(vectors).sum() > 0
    fewer = compose_run(
        "embed",
        [f"data.root={tiny_cohort}", "modality=ehr_codes", f"model_path={ckpt}", "data.max_events=16"],
        logs,
        tmp_path / "embed16",
    )
    assert embed(fewer) != folder  # other events in the rows: another cache, not a reuse
