"""A MEDS dataset written by MEDS tooling, read as it is: validate, train (debug=smoke), evaluate.

The datasets come from meds_testing_helpers (a dev dependency, pinned; nothing is committed):

* its generator (``build_sample_MEDS_dataset``, ``dataset_spec/data_generator=sample``) writes
  sharded ``data/*.parquet`` without numeric values for most codes and without text_value, an
  empty ``metadata/codes.parquet``, ``dataset.json`` and 120/15/15 subject splits. It writes no
  labels, so the test derives a binary label file in the MEDS label schema from the events
  (see ``derive_labels``). 150 subjects: the smoke run's 16-subject batches and its tuning and
  held_out splits each hold both classes.
* its static dataset (``SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS``, written by
  ``MEDSDataset.write``) shards events by split (``data/train/0.parquet``...), writes
  ``dataset.json`` as ``{}`` and keeps sharded labels in ``task_labels/<task>/`` with several
  prediction times per subject. With 6 subjects (1 tuning, 1 held_out) it is too small to train
  on, so it is only prepared and validated.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c

pytestmark = pytest.mark.slow

TASK = "meds_derived"


def derive_labels(root: Path) -> Path:
    """A binary MEDS label per subject: prediction_time = the subject's middle timed event;
    boolean_value = whether code dynamic//6 occurs after it (what a labeller like ACES does)."""
    events = pa.concat_tables(pq.read_table(p) for p in sorted((root / "data").rglob("*.parquet")))
    events = events.filter(pc.is_valid(events.column("time"))).sort_by([("subject_id", "ascending")])
    frame = events.select(["subject_id", "time", "code"]).to_pandas()
    rows = []
    for sid, group in frame.groupby("subject_id"):
        times = np.sort(group.time.unique())
        when = times[len(times) // 2]
        after = group[group.time > when]
        rows.append((sid, when, bool((after.code == "dynamic//6").any())))
    ids, when, value = zip(*rows, strict=True)
    table = pa.table(
        {
            "subject_id": pa.array(ids, pa.int64()),
            "prediction_time": pa.array(when, pa.timestamp("us")),
            "boolean_value": pa.array(value, pa.bool_()),
        }
    )
    path = root / c.LABELS_DIR / f"{TASK}.parquet"
    path.parent.mkdir(exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def generated_meds(tmp_path_factory):
    """150 subjects written by meds_testing_helpers' generator, plus a derived label file."""
    out = tmp_path_factory.mktemp("meds") / "generated"
    tool = Path(sys.executable).with_name("build_sample_MEDS_dataset")
    args = [str(tool), "seed=1", "N_subjects=150", f"output_dir={out}", "dataset_spec/data_generator=sample"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=out.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    derive_labels(out)
    return out


@pytest.fixture(scope="module")
def static_meds(tmp_path_factory):
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS

    out = tmp_path_factory.mktemp("meds") / "static"
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS).write(out)
    return out


def test_generated_export_is_as_meds_tooling_writes_it(generated_meds):
    """What the rest of this file relies on: the generator's layout, not ours."""
    shard = pq.read_schema(next((generated_meds / "data").glob("*.parquet")))
    assert "text_value" not in shard.names and shard.field("time").type == pa.timestamp("us")
    assert pq.read_table(generated_meds / c.CODES_METADATA).num_rows == 0  # code metadata may be empty
    labels = pq.read_table(generated_meds / c.LABELS_DIR / f"{TASK}.parquet").to_pandas()
    splits = pq.read_table(generated_meds / c.SUBJECT_SPLITS).to_pandas()
    merged = labels.merge(splits, on="subject_id")
    for split in c.SPLITS:  # both classes everywhere, or AUROC would be undefined
        assert merged[merged.split == split].boolean_value.nunique() == 2, split


def test_validate_cli_passes_the_generated_export(generated_meds, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "medweave.cli.validate", f"data.root={generated_meds}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK:") and "150 subjects" in done.stdout


def test_smoke_train_and_eval_on_the_generated_export(generated_meds, tmp_path):
    from medweave.cli.eval import evaluate
    from medweave.cli.train import train
    from tests.conftest import compose_run

    overrides = [
        "debug=smoke",
        f"data.root={generated_meds}",
        "data.modalities=[ehr_codes]",
        f"task.name={TASK}",
        "model/fusion=concat",
    ]
    value = train(compose_run("train", overrides, tmp_path / "logs", tmp_path / "run"))
    assert 0.0 <= value <= 1.0
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    eval_cfg = compose_run(
        "eval", [f"ckpt_path={ckpt}", f"data.root={generated_meds}"], tmp_path / "logs", tmp_path / "eval"
    )
    results = evaluate(eval_cfg)
    assert 0.0 <= results["test/auroc"] <= 1.0


def test_static_export_sharded_by_split_with_sharded_task_labels(static_meds, tmp_path):
    from medweave.data.prepare import PrepareConfig, prepare
    from medweave.data.validate import validate_cohort
    from medweave.errors import MedweaveError

    assert sorted(
        p.relative_to(static_meds / "data").as_posix() for p in (static_meds / "data").rglob("*")
    ) == [
        "held_out",
        "held_out/0.parquet",
        "train",
        "train/0.parquet",
        "train/1.parquet",
        "tuning",
        "tuning/0.parquet",
    ]
    report = validate_cohort(static_meds, labels_dir="task_labels")
    assert report.ok, [str(p) for p in report.problems]
    assert report.counts == {"subjects": 6, "events": 62, "tasks": 1}

    def run(label_rows):
        settings = dict(labels_dir="task_labels", label_rows=label_rows, min_subjects=1)
        cfg = PrepareConfig(task="boolean_value_task", modalities=("ehr_codes",), **settings)
        return prepare(static_meds, tmp_path / "cache", cfg)

    with pytest.raises(
        MedweaveError, match=r"labels_A.parquet.parquet: row 1, field prediction_time: .*label_rows=last"
    ):
        run("error")
    # The labeller's rows, 3 or 4 per subject with the label turning true later on each.
    last = np.load(run("last") / "subjects.npz")
    first = np.load(run("first") / "subjects.npz")
    assert len(last["subject_id"]) == len(first["subject_id"]) == 6
    assert last["target"].tolist() == [1.0] * 6 and first["target"].tolist() == [0.0] * 6
    assert sorted(last["split"].tolist()) == [0, 0, 0, 0, 1, 2]
