"""medweave-export end to end: a real smoke training run is exported clean (from its folder and from
its MLflow run id, with and without the model); a copy with planted violations is refused item by
item, with the reason, and the command exits 1."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.errors import MedweaveError
from medweave.export.gather import export_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cohort whose held-out split is large enough to report on (the shared tiny one has 20
    subjects and 4 events: rightly refused whole), and one smoke training run on it (about 30 s)."""
    from medweave.cli.train import train
    from medweave.sandbox.generate import SandboxConfig, generate_cohort
    from tests.conftest import compose_run

    base = tmp_path_factory.mktemp("export")
    splits = {"train": 0.5, "tuning": 0.15, "held_out": 0.35}
    cohort = generate_cohort(
        base / "cohort",
        SandboxConfig(n_subjects=240, n_variants=100, image_size=32, seed=3, split_fractions=splits),
    )
    overrides = ["debug=smoke", f"data.root={cohort}", "data.modalities=[ehr_codes,genomics]"]
    train(compose_run("train", overrides, base / "logs", base / "run"))
    ids = [
        str(i)
        for i in pq.read_table(cohort / "metadata/subject_splits.parquet").column("subject_id").to_pylist()
    ]
    # The best epoch's checkpoint (which epoch depends on the model's defaults) beside last.ckpt.
    (best,) = [p.name for p in (base / "run" / "checkpoints").glob("epoch_*.ckpt")]
    return {"run": base / "run", "logs": base / "logs", "cohort": cohort, "ids": ids, "best": best}


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def refusals(out: Path) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in manifest(out)["refused"]}


def assert_cells_are_large(summary: dict, min_cell: int = 5) -> None:
    for group, entries in summary["groups"].items():
        for label, entry in entries.items():
            n, events = entry["n"], entry.get("events")
            if isinstance(n, int):
                assert n >= min_cell, (group, label)
                if isinstance(events, int):
                    assert min(events, n - events) >= min_cell, (group, label)
            else:
                assert "metrics" not in entry and not isinstance(events, int), (group, label)


def test_a_clean_run_leaves_checked_and_the_model_only_when_asked(trained, tmp_path):
    out = tmp_path / "release"
    result = export_run(str(trained["run"]), out)
    assert not result.failed
    m = manifest(out)
    exported = {e["path"]: e for e in m["exported"]}
    expected = {
        f"evaluation/{f}" for f in ("evaluation.json", "report.html", "roc.png", "pr.png", "calibration.png")
    }
    assert expected | {"config.yaml", "metrics.json", "evaluation/attribution.png"} == set(exported)
    assert {r["path"] for r in m["refused"]} == {f"checkpoints/{trained['best']}", "checkpoints/last.ckpt"}
    assert all(r["optional"] and "include_model" in r["reason"] for r in m["refused"])
    assert m["subject_ids_checked_against_cohort"] is True
    for path, entry in exported.items():
        data = (out / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], path
        assert not any(i.encode() in data for i in trained["ids"]), path
        assert str(trained["cohort"]).encode() not in data and str(tmp_path).encode() not in data, path
    summary = json.loads((out / "evaluation/evaluation.json").read_text())
    assert_cells_are_large(summary)
    assert summary["disclosure_control"]["min_cell"] == 5
    original = json.loads((trained["run"] / "evaluation/evaluation.json").read_text())
    assert summary["overall"] == original["overall"] and summary["n"] == original["n"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/auroc"] == pytest.approx(original["overall"]["auroc"]["value"])
    assert not [k for k in metrics if k.endswith(("/n", "/events")) and metrics[k] < 5]
    assert "<scrubbed>" in (out / "config.yaml").read_text()

    # The same run by its MLflow run id: the same report and metrics.
    run_id = (trained["run"] / "mlflow_run_id").read_text().strip()
    uri = f"sqlite:///{trained['logs'] / 'mlflow' / 'mlflow.db'}"
    by_id = export_run(run_id, tmp_path / "by-id", tracking_uri=uri)
    assert not by_id.failed
    assert (tmp_path / "by-id/metrics.json").read_text() == (out / "metrics.json").read_text()
    assert json.loads((tmp_path / "by-id/evaluation/evaluation.json").read_text()) == summary
    assert refusals(tmp_path / "by-id") == {
        f"model/{trained['best']}": refusals(out)[f"checkpoints/{trained['best']}"]
    }

    # With the model: weights, scrubbed config and vocabularies, no optimiser state.
    from medweave.cli.eval import load_checkpoint

    export_run(str(trained["run"]), out, include_model=True)  # an earlier export is replaced whole
    model = load_checkpoint(str(out / f"model/{trained['best']}"))
    source = load_checkpoint(str(trained["run"] / f"checkpoints/{trained['best']}"))
    assert model["state_dict"].keys() == source["state_dict"].keys()
    assert all((model["state_dict"][k] == v).all() for k, v in source["state_dict"].items())
    assert "optimizer_states" not in model and model["medweave"]["config"]["data"]["root"] == "<scrubbed>"
    assert model["medweave"]["vocab"]["codes"] == source["medweave"]["vocab"]["codes"]
    entry = next(e for e in manifest(out)["exported"] if e["path"] == f"model/{trained['best']}")
    flags = " | ".join(entry["flags"])  # what it learnt from the train split is named
    assert "codes, each seen in >= 5 train subjects" in flags and "per-variant dosage mean" in flags


def plant_violations(run: Path, ids: list[str]) -> None:
    pq.write_table(
        pa.table({"subject_id": [int(i) for i in ids[:30]], "score": [0.5] * 30}), run / "predictions.parquet"
    )
    (run / "extra").mkdir()
    (run / "extra/lookup.csv").write_text("ref,group\n" + "".join(f"{i},a\n" for i in ids[:8]))
    (run / "extra/notes.json").write_text(json.dumps({"case_notes": {"birthday": "1917-03-14"}}, indent=1))
    shutil.copyfile(run / "evaluation/roc.png", run / "extra/scatter.png")
    (run / "extra/summary.md").write_text("Fine: AUROC 0.71 on the held-out split.\n")
    evaluation = run / "evaluation/evaluation.json"
    summary = json.loads(evaluation.read_text())
    summary["groups"]["sex"]["unknown"] = {"n": 3, "events": 1, "metrics": summary["overall"]}
    summary["n"] += 3
    summary["events"] += 1
    thin = {"label": "highest third of risk", "n": 4, "time": [30.0, 91.0, 200.0], "at_risk": [4, 3, 2]}
    km = {"kind": "kaplan_meier", "curves": [{**thin, "events": [1, 1, 1], "survival": [0.75, 0.5, 0.25]}]}
    summary["figures"]["kaplan_meier.png"] = km
    shutil.copyfile(run / "evaluation/roc.png", run / "evaluation/kaplan_meier.png")
    shutil.copyfile(run / "evaluation/roc.png", run / "evaluation/unrecorded.png")
    evaluation.write_text(json.dumps(summary))


def test_planted_violations_are_listed_and_refused(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    plant_violations(run, trained["ids"])
    out = tmp_path / "release"
    proc = run_export(f"run={run}", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "files were refused" in proc.stderr
    refused = refusals(out)
    expected = {
        "predictions.parquet": "predictions are one row per subject",
        "extra/lookup.csv": "column 'ref' holds subject IDs of the cohort",
        "extra/notes.json": "a birth date (line 3)",
        "extra/scatter.png": "a figure without a record of its counts",
        "evaluation/kaplan_meier.png": "no Kaplan-Meier step pools 5 events",
        "evaluation/unrecorded.png": "no record of the counts it was drawn from",
        f"checkpoints/{trained['best']}": "export.include_model=true",
        "checkpoints/last.ckpt": "export.include_model=true",
    }
    assert set(refused) == set(expected)
    for path, reason in expected.items():
        assert reason in refused[path], (path, refused[path])
        assert any(f"refused {path}: " in line for line in proc.stdout.splitlines()), path  # one line each
    assert not any(
        i in proc.stdout + proc.stderr + (out / "manifest.json").read_text() for i in trained["ids"]
    )
    assert "1917-03-14" not in proc.stdout + (out / "manifest.json").read_text()  # reasons never quote it
    for path in expected:
        assert not (out / path).exists()
    assert (out / "extra/summary.md").is_file() and (out / "evaluation/roc.png").is_file()

    summary = json.loads((out / "evaluation/evaluation.json").read_text())
    sex = summary["groups"]["sex"]
    assert sex["unknown"] == {"n": "<5", "events": None, "note": "fewer than 5 persons: not reported"}
    assert "suppressed" in [v["n"] for v in sex.values()]  # 3 = total - female - male otherwise
    assert_cells_are_large(summary)
    html = (out / "evaluation/report.html").read_text()
    assert "kaplan_meier.png" not in html and "unrecorded.png" not in html and "roc.png" in html


def run_export(*args: str, cwd: Path):
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLCONFIGDIR": str(cwd / "mpl")}
    return subprocess.run(
        [sys.executable, "-m", "medweave.cli.export", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_bad_input_is_one_clear_error(trained, tmp_path):
    with pytest.raises(MedweaveError, match="no such folder, and not a 32-character MLflow run id"):
        export_run(str(tmp_path / "nope"), tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("x")
    (tmp_path / "run").mkdir()
    with pytest.raises(MedweaveError, match="not an earlier export"):
        export_run(str(tmp_path / "run"), tmp_path / "mine")
    assert (tmp_path / "mine/thesis.tex").read_text() == "x"
    with pytest.raises(MedweaveError, match="inside the run folder"):
        export_run(str(tmp_path / "run"), tmp_path / "run" / "release")
    with pytest.raises(MedweaveError, match="no such run in the MLflow store"):
        export_run(
            "0" * 32, tmp_path / "out", tracking_uri=f"sqlite:///{trained['logs'] / 'mlflow' / 'mlflow.db'}"
        )
    assert not (tmp_path / "out").exists()
