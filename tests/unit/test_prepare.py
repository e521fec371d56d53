import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.ehr import EhrCache
from medweave.data.prepare import PrepareConfig, prepare
from medweave.data.store import open_arrays
from medweave.errors import MedweaveError

ALL = ("ehr_codes", "text", "image", "genomics")


def ehr_arrays(folder, max_events=64) -> dict:
    """The EHR cache as dense [N, max_events] arrays (codes, values, days)."""
    vocab = json.loads((folder / "vocab.json").read_text())
    cache = EhrCache(folder, vocab)
    return cache.batch(np.arange(len(cache.index)), width=max_events)


def load(folder, name):
    """A cache array by its name, the EHR ones from the shards."""
    if name.startswith("ehr_"):
        return ehr_arrays(folder)[name.removeprefix("ehr_")]
    return np.asarray(open_arrays(folder)[name])


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
    codes, days = load(prepared, "ehr_codes"), load(prepared, "ehr_days")
    static = np.isnan(days)
    sex = [vocab["codes"].index(f"SEX//{s}") + 2 for s in "FM"]
    assert np.isin(codes[static], sex).all() and static.sum() == len(codes)  # one sex event each
    assert (days[(codes > 0) & ~static] > 0).all()


def test_post_prediction_notes_never_reach_the_cache(tiny_cohort, tmp_path):
    """Plant a marker word in notes at and after prediction_time: it must not be tokenised."""
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    shard = next((copy / "data").glob("*.parquet"))
    events = pq.read_table(shard).to_pandas()
    labels = pq.read_table(copy / "labels/cvd_onset_1y.parquet").to_pandas()
    pred = events.subject_id.map(labels.set_index("subject_id").prediction_time)
    late = events.code.str.startswith("NOTE//") & (events.time >= pred)
    assert late.any()
    events.loc[late, "text_value"] = "zebracanary " * 3
    at_pred = labels[["subject_id"]].assign(
        time=labels.prediction_time, code="NOTE//clinic", numeric_value=np.nan, text_value="zebracanary"
    )
    both = pa.Table.from_pandas(pd.concat([events, at_pred]), preserve_index=False)
    pq.write_table(both.cast(c.EVENTS_SCHEMA), shard)
    out = prepare(copy, tmp_path / "cache", cfg(modalities=("text",), min_subjects=1))
    assert "zebracanary" not in json.loads((out / "vocab.json").read_text())["tokenizer"]["json"]


def test_nanosecond_timestamps_are_read_as_times(tiny_cohort, prepared, tmp_path):
    """pandas writes timestamp[ns]; a unit mix-up would let every future event through."""
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    path = copy / "labels/cvd_onset_1y.parquet"
    labels = pq.read_table(path)
    pq.write_table(labels.set_column(1, "prediction_time", labels.column(1).cast(pa.timestamp("ns"))), path)
    again = prepare(copy, tmp_path / "cache", cfg())
    for name in ("ehr_codes", "text_ids"):
        np.testing.assert_array_equal(load(again, name), load(prepared, name))


def test_held_out_only_cohort_with_checkpoint_vocab(tiny_cohort, prepared, tmp_path):
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    splits = pq.read_table(copy / c.SUBJECT_SPLITS)
    held = pa.array(["held_out"] * splits.num_rows)
    pq.write_table(splits.set_column(1, "split", held), copy / c.SUBJECT_SPLITS)
    with pytest.raises(MedweaveError, match="no labelled subject is in the train split"):
        prepare(copy, tmp_path / "cache", cfg())
    vocab = json.loads((prepared / "vocab.json").read_text())
    out = prepare(copy, tmp_path / "cache", cfg(), vocab=vocab)
    assert (np.load(out / "subjects.npz")["split"] == 2).all()


def test_rare_codes_and_their_values_stay_out_of_the_vocabulary(tiny_cohort, tmp_path):
    copy = shutil.copytree(tiny_cohort, tmp_path / "copy")
    shard = next((copy / "data").glob("*.parquet"))
    events = pq.read_table(shard)
    first = events.slice(0, 1).to_pandas()
    subject = pq.read_table(copy / c.SUBJECT_SPLITS).to_pandas().query("split == 'train'").subject_id.iloc[0]
    rare = first.assign(
        subject_id=subject,
        time=pd.Timestamp("2000-01-01"),
        code="LOCAL//ONE_PERSON",
        numeric_value=123.0,
        text_value=None,
    )
    pq.write_table(
        pa.concat_tables([events, pa.Table.from_pandas(rare, preserve_index=False).cast(c.EVENTS_SCHEMA)]),
        shard,
    )
    vocab = json.loads(
        (prepare(copy, tmp_path / "c", cfg(modalities=("ehr_codes",))) / "vocab.json").read_text()
    )
    assert "LOCAL//ONE_PERSON" not in vocab["codes"] and "LOCAL//ONE_PERSON" not in vocab["code_stats"]
    assert "NPU//NPU27300" in vocab["code_stats"]


def test_presence_and_shapes(prepared):
    s = np.load(prepared / "subjects.npz")
    n = len(s["subject_id"])
    assert s["present_ehr_codes"].all()
    assert 0 < s["present_image"].sum() < n and 0 < s["present_genomics"].sum() < n
    assert np.asarray(open_arrays(prepared)["image"]).shape == (n, 1, 32, 32)
    assert np.asarray(open_arrays(prepared)["text_ids"]).shape == (n, 64)
    image = np.asarray(open_arrays(prepared)["image"])
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
    twice = "subject_splits.parquet: row 120, field subject_id: subject listed twice"
    with pytest.raises(MedweaveError, match=twice):
        prepare(copy, tmp_path / "cache", cfg(modalities=("ehr_codes",)))
    left = [p.name for p in (tmp_path / "cache").glob("*") if not p.name.endswith(".lock")]
    assert not left


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
    with pytest.raises(MedweaveError, match=r"0.parquet: column code: missing; MEDS events need"):
        prepare(copy, tmp_path / "cache", cfg(modalities=("ehr_codes",)))


def test_given_vocab_maps_the_same_way(tiny_cohort, prepared, tmp_path):
    vocab = json.loads((prepared / "vocab.json").read_text())
    again = prepare(tiny_cohort, tmp_path, cfg(), vocab=vocab)
    assert json.loads((again / "vocab.json").read_text()) == vocab
    for name in ("ehr_codes", "ehr_values", "ehr_days", "text_ids", "genomics"):
        np.testing.assert_array_equal(load(again, name), load(prepared, name))
