"""hparams_search=optuna: trials nest under one MLflow run, and an interrupted search resumes."""

from __future__ import annotations

import pytest

from tests.integration.test_train_eval import mlflow_client, only_run, run_cli

pytestmark = pytest.mark.slow


def search(cohort, cwd, n_trials):
    proc = run_cli(
        "medweave.cli.train",
        "--multirun",
        "hparams_search=optuna",
        "debug=smoke",
        "data.modalities=[ehr_codes,image]",
        f"data.root={cohort}",
        f"hydra.sweeper.n_trials={n_trials}",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_search_resumes_and_nests_trials_under_one_run(tiny_cohort, tmp_path):
    import optuna
    from optuna.trial import TrialState

    search(tiny_cohort, tmp_path, n_trials=2)
    storage = f"sqlite:///{tmp_path / 'logs' / 'optuna' / 'studies.db'}"
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2

    # A search cut off mid-trial leaves that trial RUNNING; the next launch must run it again.
    space = {"model.dim": optuna.distributions.CategoricalDistribution([16, 32, 64])}
    study.enqueue_trial({"model.dim": 16})
    cut_off = study.ask(space)
    search(tiny_cohort, tmp_path, n_trials=3)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3  # two before, and the interrupted one again: not a fourth new one
    assert complete[-1].params["model.dim"] == cut_off.params["model.dim"]
    assert study.get_trials(states=(TrialState.RUNNING,)) == []

    runs = only_run(mlflow_client(tmp_path / "logs"))
    parents = [r for r in runs if r.info.run_name.endswith("(search)")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1  # reused on resume
    assert len(children) == 3 and {r.data.tags["mlflow.parentRunId"] for r in children} == {
        parents[0].info.run_id
    }
    assert all("val/auroc" in r.data.metrics for r in children)
