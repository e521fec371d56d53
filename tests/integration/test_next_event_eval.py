"""End to end on the tiny sandbox: a smoke next-event pretraining, then medweave-eval on its
checkpoint writes the next-event report (per-code AUROC table, histogram, simulated futures);
a masked-objective checkpoint is refused with the reason."""

from __future__ import annotations

import json

import pytest

from medweave.errors import MedweaveError
from tests.conftest import compose_run

pytestmark = pytest.mark.slow  # two smoke pretrainings: 25 s of CPU, minutes under load


def test_medweave_eval_on_a_next_event_checkpoint(tiny_cohort, tmp_path):
    from medweave.cli.eval import evaluate
    from medweave.cli.pretrain import pretrain

    logs = tmp_path / "logs"
    base = ["debug=pretrain_smoke", f"data.root={tiny_cohort}", "logger=csv"]
    pretrain(compose_run("pretrain", base, logs, tmp_path / "pt"))
    ckpt = tmp_path / "pt" / "checkpoints" / "last.ckpt"
    settings = [
        f"ckpt_path={ckpt}",
        f"data.root={tiny_cohort}",
        "logger=csv",
        "evaluation.next_event.min_cases=1",
        "evaluation.min_group_size=1",  # a tiny cohort: every cell is small
        "evaluation.next_event.bootstrap=20",
        "evaluation.next_event.simulate.max_subjects=8",
        "evaluation.next_event.simulate.samples=2",
        "evaluation.next_event.simulate.years=2",
        "evaluation.next_event.simulate.max_steps=20",
        "evaluation.next_event.simulate.min_subjects=1",
        "evaluation.next_event.simulate.reference_subjects=50",
    ]
    results = evaluate(compose_run("eval", settings, logs, tmp_path / "eval"))
    folder = tmp_path / "eval" / "evaluation"
    summary = json.loads((folder / "evaluation.json").read_text())
    assert summary["kind"] == "next_event" and summary["subjects"] > 5
    assert summary["n_codes"] == len(summary["per_code"]) > 0
    assert all(0 <= r["auroc"] <= 1 and r["cases"] >= 1 for r in summary["per_code"])
    assert results["test/next_event/n_codes"] == summary["n_codes"]
    simulation = summary["simulation"]
    assert [e["year"] for e in simulation["foreseen"]] == [1, 2]
    assert simulation["events_per_subject_year"] > 0 and simulation["incidence_points"]
    page = (folder / "report.html").read_text()
    assert "Per-code AUROC" in page and "Simulated futures" in page
    assert (folder / "per_code_auroc.png").stat().st_size > 1000 and (folder / "incidence.png").is_file()

    # The index event read at each prediction time: the same report, the event after each history;
    # logged to MLflow, whose run ends with every metric written (nothing ends it but the eval).
    queried = [*settings, "evaluation.next_event.query=SANDBOX//INDEX", "logger=mlflow"]
    indexed = evaluate(compose_run("eval", queried, logs, tmp_path / "q"))
    assert indexed["test/next_event/n_codes"] > 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(logs / 'mlflow' / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("medweave").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/next_event/n_codes"] == indexed["test/next_event/n_codes"]
    assert json.loads((tmp_path / "q" / "evaluation" / "evaluation.json").read_text())["simulation"][
        "foreseen"
    ]
    with pytest.raises(MedweaveError, match="query='NOPE//X' is not in the checkpoint's vocabulary"):
        evaluate(
            compose_run("eval", [*settings, "evaluation.next_event.query=NOPE//X"], logs, tmp_path / "q2")
        )

    masked = tmp_path / "masked"
    pretrain(compose_run("pretrain", [*base, "pretrain/objective=masked"], logs, masked))
    settings[0] = f"ckpt_path={masked / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(MedweaveError, match="no waiting-time head"):
        evaluate(compose_run("eval", settings, logs, tmp_path / "eval_masked"))
