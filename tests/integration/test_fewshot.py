"""medweave-fewshot end to end on the tiny sandbox: a tiny pretrained checkpoint, k in {1, 2},
every arm, the files and the plot written; and its bad-input errors."""

from __future__ import annotations

import csv
import json

import pytest

from medweave.errors import MedweaveError
from tests.conftest import compose_run


@pytest.mark.slow
def test_fewshot_sweep_writes_curves_for_every_arm(tiny_cohort, tmp_path):
    from medweave.cli.fewshot import fewshot
    from medweave.cli.pretrain import pretrain

    logs = tmp_path / "logs"
    pretrain(
        compose_run("pretrain", ["debug=pretrain_smoke", f"data.root={tiny_cohort}"], logs, tmp_path / "pt")
    )
    ckpt = tmp_path / "pt" / "checkpoints" / "last.ckpt"
    base = [
        "debug=smoke",
        f"data.root={tiny_cohort}",
        f"fewshot.pretrained={ckpt}",
        "fewshot.ks=[1,2]",
        "fewshot.draws=1",
        "task_name=fewshot",
        "fewshot.bootstrap=20",
        "fewshot.train.max_epochs=2",
        "fewshot.train.head_epochs=1",
    ]
    run = tmp_path / "fewshot"
    arms = ["scratch", "finetuned", "probe", "gbm", "zeroshot"]
    summary = fewshot(compose_run("fewshot", [*base, f"fewshot.arms=[{','.join(arms)}]"], logs, run))

    with open(run / "fewshot.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({(r["arm"], r["k"], r["draw"]) for r in rows}) == sorted(
        (a, k, "0") for a in arms for k in ("1", "2")
    )
    for r in rows:
        assert int(r["n_train"]) == 2 * int(r["k"])
        assert 0 <= float(r["auroc"]) <= 1 and float(r["auroc_ci_low"]) <= float(r["auroc_ci_high"])
    assert json.loads((run / "fewshot.json").read_text())["curves"].keys() == set(arms)
    assert [p["k"] for p in summary["curves"]["gbm"]] == [1, 2]
    zero_shot = {r["auroc"] for r in rows if r["arm"] == "zeroshot"}
    assert len(zero_shot) == 1 and {r["epochs"] for r in rows if r["arm"] == "zeroshot"} == {"0"}
    assert (run / "fewshot_auroc.png").stat().st_size > 1000
    assert "fewshot_auroc.png" in (run / "report.html").read_text()
    assert summary["oracle"] is not None  # a sandbox knows its ceiling

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{(logs / 'mlflow' / 'mlflow.db').resolve()}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "medweave"]
    (mlflow_run,) = [
        r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "fewshot"
    ]
    assert "fewshot/gbm/auroc" in mlflow_run.data.metrics
    assert {a.path for a in client.list_artifacts(mlflow_run.info.run_id, "fewshot")} >= {
        "fewshot/fewshot.csv",
        "fewshot/fewshot_auroc.png",
        "fewshot/report.html",
    }

    # A time budget stops starting draws; the report covers what was done (here nothing).
    cut = fewshot(
        compose_run("fewshot", [*base, "fewshot.max_minutes=0", "fewshot.arms=[gbm]"], logs, tmp_path / "cut")
    )
    assert cut["runs_done"] == 0 and cut["runs_planned"] == 2
    assert "Cut short" in (tmp_path / "cut" / "report.html").read_text()

    # k beyond what train holds: the error names k and the counts.
    with pytest.raises(MedweaveError, match=r"k=5000 is more than the train split has: \d+ positive"):
        fewshot(
            compose_run("fewshot", [*base, "fewshot.ks=[5000]", "fewshot.arms=[gbm]"], logs, tmp_path / "big")
        )


def test_fewshot_refuses_pretrained_arms_without_a_checkpoint(tiny_cohort, tmp_path):
    from medweave.cli.fewshot import fewshot

    base = ["debug=smoke", f"data.root={tiny_cohort}"]
    with pytest.raises(MedweaveError, match=r"\['finetuned', 'probe'\] need fewshot.pretrained"):
        fewshot(compose_run("fewshot", base, tmp_path / "logs", tmp_path / "a"))
    with pytest.raises(MedweaveError, match="fewshot.pretrained=.*nothing.ckpt does not exist"):
        fewshot(
            compose_run(
                "fewshot",
                [*base, f"fewshot.pretrained={tmp_path}/nothing.ckpt"],
                tmp_path / "logs",
                tmp_path / "b",
            )
        )
    with pytest.raises(MedweaveError, match="zeroshot, which needs fewshot.prior"):
        fewshot(
            compose_run(
                "fewshot",
                [*base, "fewshot.arms=[zeroshot]", "fewshot.prior=null", "task_name=z"],
                tmp_path / "logs",
                tmp_path / "z",
            )
        )
    with pytest.raises(MedweaveError, match="fewshot.arms: unknown \\['lasso'\\]"):
        fewshot(
            compose_run("fewshot", [*base, "fewshot.arms=[gbm,lasso]"], tmp_path / "logs", tmp_path / "c")
        )
