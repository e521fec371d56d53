"""Targets for every task type, read from MEDS label files, and the heads that use them."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from medweave.data.prepare import PrepareConfig, prepare
from medweave.errors import MedweaveError
from medweave.models.heads.regression import RegressionHead


def targets(root, cache, **kw):
    folder = prepare(root, cache, PrepareConfig(modalities=("ehr_codes",), max_events=16, **kw))
    subjects = np.load(folder / "subjects.npz")
    return subjects, folder


def labels(root, task):
    return pq.read_table(root / f"labels/{task}.parquet").to_pandas().set_index("subject_id")


def test_each_type_reads_its_label_column(tiny_cohort, tmp_path):
    s, _ = targets(tiny_cohort, tmp_path, task="hba1c_1y", task_type="regression")
    truth = labels(tiny_cohort, "hba1c_1y").loc[s["subject_id"]]
    np.testing.assert_allclose(s["target"], truth.float_value, rtol=1e-6)  # raw values, in mmol/mol

    s, folder = targets(tiny_cohort, tmp_path, task="first_diagnosis_1y", task_type="multiclass")
    import json

    classes = json.loads((folder / "vocab.json").read_text())["classes"]
    truth = labels(tiny_cohort, "first_diagnosis_1y").loc[s["subject_id"]].categorical_value
    assert [classes[k] for k in s["target"]] == truth.tolist()

    s, _ = targets(
        tiny_cohort,
        tmp_path,
        task="onsets_1y",
        task_type="multilabel",
        label_tasks=("cvd_onset_1y", "t1d_onset_1y"),
    )
    assert s["target"].shape == (len(s["subject_id"]), 2)
    np.testing.assert_array_equal(
        s["target"][:, 1], labels(tiny_cohort, "t1d_onset_1y").loc[s["subject_id"]].boolean_value
    )


def test_a_class_unseen_in_train_is_refused(tiny_cohort, tmp_path):
    root = shutil.copytree(tiny_cohort, tmp_path / "c")
    table = labels(root, "first_diagnosis_1y").reset_index()
    splits = pq.read_table(root / "metadata/subject_splits.parquet").to_pandas()
    held = splits[splits.split == "held_out"].subject_id.iloc[0]
    table.loc[table.subject_id == held, "categorical_value"] = "stroke"
    pq.write_table(
        pa.Table.from_pandas(table, preserve_index=False), root / "labels/first_diagnosis_1y.parquet"
    )
    with pytest.raises(MedweaveError, match=r"classes \['stroke'\] never occur in train"):
        targets(root, tmp_path / "cache", task="first_diagnosis_1y", task_type="multiclass")


def test_multilabel_files_must_label_the_same_subjects(tiny_cohort, tmp_path):
    root = shutil.copytree(tiny_cohort, tmp_path / "c")
    t1d = pq.read_table(root / "labels/t1d_onset_1y.parquet")
    pq.write_table(t1d.slice(1), root / "labels/t1d_onset_1y.parquet")  # one subject fewer
    with pytest.raises(MedweaveError, match="same subjects and prediction times"):
        targets(
            root,
            tmp_path / "cache",
            task="onsets_1y",
            task_type="multilabel",
            label_tasks=("cvd_onset_1y", "t1d_onset_1y"),
        )


def test_null_values_for_the_task_type_are_refused(tiny_cohort, tmp_path):
    root = shutil.copytree(tiny_cohort, tmp_path / "c")
    table = labels(root, "hba1c_1y").reset_index()
    table["float_value"] = table["float_value"].astype(object)
    table.loc[2, "float_value"] = None
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), root / "labels/hba1c_1y.parquet")
    with pytest.raises(MedweaveError, match="row 2, field float_value: label is null; a regression task"):
        targets(root, tmp_path / "cache", task="hba1c_1y", task_type="regression")


def test_regression_head_learns_z_scores_and_reports_the_unit():
    head = RegressionHead(in_dim=2, target_mean=40.0, target_sd=8.0)
    out = torch.tensor([0.0, 1.0, -0.5])
    batch = {"targets": torch.tensor([40.0, 48.0, 36.0])}
    assert head.loss(out, batch).item() == pytest.approx(0.0)
    assert head.score(out).tolist() == pytest.approx([40.0, 48.0, 36.0])


def test_unknown_task_type_is_a_clear_error(tiny_cohort, tmp_path):
    from medweave.data.datamodule import CohortDataModule

    with pytest.raises(MedweaveError, match="task.type=ordinal"):
        CohortDataModule(str(tiny_cohort), "x", ["ehr_codes"], str(tmp_path), task_type="ordinal")
