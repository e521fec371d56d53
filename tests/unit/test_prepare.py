import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.prepare import PrepareConfig, prepare
from medweave.errors import MedweaveError

ALL = ("ehr_codes", "text", "image", "genomics")


def cfg(**kw):
    settings = {"modalities": ALL, "max_events": 64, "max_text_tokens": 64, "image_size": 32, **kw}
    return PrepareConfig(task="cvd_onset_1y", **settings)


@pytest.fixture(scope="module")
def prepared(tiny_cohort, tmp_path_factory):
    return prepare(tiny_cohort, tmp_path_factory.mktemp("cache"), cfg())


def test_only_events_before_prediction_time(prepared):
    vocab = json.loads((prepared / "vocab.json").read_text())
    # In the sandbox the outcome diagnosis happens only after prediction_time.
    assert "ICD10//I21" not in vocab["codes"]
    codes, days = np.load(prepared / "ehr_codes.npy"), np.load(prepared / "ehr_days.npy")
    static = {vocab["codes"].index(f"SEX//{s}") + 2 for s in "FM" if f"SEX//{s}" in vocab["codes"]}
    real = (codes > 0) & ~np.isin(codes, list(static))
    assert (days[real] > 0).all()


def test_presence_and_shapes(prepared):
    s = np.load(prepared / "subjects.npz")
    n = len(s["subject_id"])
    assert s["present_ehr_codes"].all()
    assert 0 < s["present_image"].sum() < n and 0 < s["present_genomics"].sum() < n
    assert np.load(prepared / "image.npy").shape == (n, 1, 32, 32)
    assert np.load(prepared / "text_ids.npy").shape == (n, 64)
    image = np.load(prepared / "image.npy")
    assert not image[~s["present_image"]].any()


def test_cache_is_reused_and_keyed_by_config(tiny_cohort, tmp_path):
    first = prepare(tiny_cohort, tmp_path, cfg(modalities=("ehr_codes",)))
    stamp = (first / "manifest.json").stat().st_mtime_ns
    again = prepare(tiny_cohort, tmp_path, cfg(modalities=("ehr_codes",)))
    assert again == first and (again / "manifest.json").stat().st_mtime_ns == stamp
    other = prepare(tiny_cohort, tmp_path, cfg(modalities=("ehr_codes",), max_events=16))
    assert other != first
    assert not list(tmp_path.glob(".*tmp*"))


def test_changed_cohort_gets_new_cache(tiny_cohort, tmp_path):
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    first = prepare(copy, tmp_path / "cache", cfg(modalities=("ehr_codes",)))
    labels = pq.read_table(copy / "labels/cvd_onset_1y.parquet")
    flipped = labels.set_column(2, "boolean_value", pa.compute.invert(labels.column("boolean_value")))
    pq.write_table(flipped, copy / "labels/cvd_onset_1y.parquet")
    assert prepare(copy, tmp_path / "cache", cfg(modalities=("ehr_codes",))) != first


def test_subject_in_two_splits_refused(tiny_cohort, tmp_path):
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    splits = pq.read_table(copy / c.SUBJECT_SPLITS)
    doubled = pa.concat_tables([splits, splits.slice(0, 1)])
    pq.write_table(doubled, copy / c.SUBJECT_SPLITS)
    with pytest.raises(MedweaveError, match="subject_splits.parquet: a subject_id appears more than once"):
        prepare(copy, tmp_path / "cache", cfg(modalities=("ehr_codes",)))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize(
    "remove,message",
    [
        ("labels/cvd_onset_1y.parquet", "no labels for task 'cvd_onset_1y'"),
        (c.SUBJECT_SPLITS, "has no metadata/subject_splits.parquet"),
    ],
)
def test_missing_files_named(tiny_cohort, tmp_path, remove, message):
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    (copy / remove).unlink()
    with pytest.raises(MedweaveError, match=message):
        prepare(copy, tmp_path / "cache", cfg(modalities=("ehr_codes",)))


def test_missing_column_named(tiny_cohort, tmp_path):
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    shard = next((copy / "data").glob("*.parquet"))
    pq.write_table(pq.read_table(shard).drop_columns(["code"]), shard)
    with pytest.raises(MedweaveError, match=r"0.parquet: missing column\(s\) \['code'\]"):
        prepare(copy, tmp_path / "cache", cfg(modalities=("ehr_codes",)))


def test_given_vocab_maps_the_same_way(tiny_cohort, prepared, tmp_path):
    vocab = json.loads((prepared / "vocab.json").read_text())
    again = prepare(tiny_cohort, tmp_path, cfg(), vocab=vocab)
    assert json.loads((again / "vocab.json").read_text()) == vocab
    for name in ("ehr_codes.npy", "text_ids.npy", "genomics.npy"):
        np.testing.assert_array_equal(np.load(again / name), np.load(prepared / name))
