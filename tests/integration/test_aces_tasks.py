"""End to end with tasks defined as ACES config files: sandbox -> task=<file> -> train -> eval."""

from __future__ import annotations

import pytest

from medweave.cli.hydra_main import config_dir, task_file_overrides
from tests.integration.test_train_eval import mlflow_client, only_run, run_cli

pytestmark = pytest.mark.slow
SHIPPED = config_dir() / "aces"


def test_train_and_eval_on_an_aces_task(smoke_cfg, tmp_path, tiny_cohort):
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose_run

    cfg = smoke_cfg(*task_file_overrides([f"task={SHIPPED / 'cvd_onset_1y.yaml'}"]))
    assert cfg.data.aces == str(SHIPPED / "cvd_onset_1y.yaml")
    value = train(cfg)
    assert 0.0 <= value <= 1.0
    [run] = only_run(mlflow_client(tmp_path / "logs"))
    for key in ("test/auroc", "test/auprc", "val/auroc"):
        assert run.data.metrics[key] == run.data.metrics[key], key  # present, not NaN
    [labels] = (tmp_path / "logs" / "cache" / "labels").glob("*/cvd_onset_1y.parquet")
    assert (labels.parent / "task.yaml").read_bytes() == (SHIPPED / "cvd_onset_1y.yaml").read_bytes()

    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_run(
        "eval", [f"ckpt_path={ckpt}", f"data.root={tiny_cohort}"], tmp_path / "logs", tmp_path / "eval"
    )
    assert 0.0 <= evaluate(eval_cfg)["test/auroc"] <= 1.0  # the checkpoint's task file labels again


def test_cli_trains_a_survival_task_file(tmp_path, tiny_cohort):
    """The real entry point: `medweave-train task=<file>`; survival picks Cox and the C-index."""
    proc = run_cli(
        "medweave.cli.train",
        "debug=smoke",
        f"task={SHIPPED / 'cvd_survival.yaml'}",
        f"data.root={tiny_cohort}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = only_run(mlflow_client(tmp_path / "logs"))
    assert "test/c_index" in run.data.metrics
    assert run.data.params["model.head._target_"].endswith("CoxHead")


def test_cli_refuses_a_malformed_task_file_in_one_line(tmp_path, tiny_cohort):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SHIPPED / "cvd_onset_1y.yaml").read_text().replace("    label: cvd", "    lable: cvd"))
    proc = run_cli(
        "medweave.cli.train", "debug=smoke", f"task={bad}", f"data.root={tiny_cohort}", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("medweave-train: error:")]
    assert "field windows.target.lable: unknown window field" in line and "line " in line
    assert "Traceback" not in proc.stderr and not (tmp_path / "logs").exists()  # nothing written


def test_labels_from_aces_cli_by_hand_come_in_through_labels_dir(tmp_path, tiny_cohort):
    """The same file runs under ACES's own CLI (the metadata block is ignored there); its output,
    read as any MEDS label file, gives the same targets as task=<file>."""
    import subprocess
    import sys
    from pathlib import Path

    import numpy as np

    from medweave.data.datamodule import CohortDataModule

    task = SHIPPED / "cvd_onset_1y.yaml"
    [shard] = (tiny_cohort / "data").glob("*.parquet")
    out = tmp_path / "by_hand"
    cli = Path(sys.executable).parent / "aces-cli"
    proc = subprocess.run(
        [str(cli), "data.standard=meds", f"data.path={shard}", f"config_path={task}", f"cohort_dir={out}",
         "cohort_name=cvd_onset_1y", f"output_filepath={out / 'cvd_onset_1y.parquet'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]

    def targets(**kw):
        dm = CohortDataModule(
            root=str(tiny_cohort),
            task="cvd_onset_1y",
            modalities=["ehr_codes"],
            cache_dir=str(tmp_path / "c"),
            **kw,
        )
        dm.setup()
        return dm.cohort.subject_id, dm.cohort.target

    by_hand, ours = targets(labels_dir=str(out)), targets(aces=str(task))
    np.testing.assert_array_equal(by_hand[0], ours[0])
    np.testing.assert_array_equal(by_hand[1], ours[1])
