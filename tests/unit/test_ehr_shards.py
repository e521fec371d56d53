"""EHR preparation shard by shard: the map-reduce vocabulary, the same bytes whatever the number
of workers, and a failed shard named, with the others kept for the rerun."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data.ehr import EhrCache
from medweave.data.ehr.shards import DONE
from medweave.data.prepare import PrepareConfig, prepare
from medweave.errors import MedweaveError

N_SHARDS = 3


def cfg(**kw) -> PrepareConfig:
    return PrepareConfig(task="cvd_onset_1y", modalities=("ehr_codes",), **{"max_events": 16, **kw})


@pytest.fixture(scope="module")
def sharded(tiny_cohort, tmp_path_factory):
    """The tiny cohort with its events in three shards by subject_id % 3 (as MEDS ETLs hash them)."""
    copy = shutil.copytree(tiny_cohort, tmp_path_factory.mktemp("sharded") / "cohort")
    (single,) = (copy / c.EVENTS_DIR).glob("*.parquet")
    table = pq.read_table(single)
    single.unlink()
    shard_of = table.column("subject_id").to_numpy() % N_SHARDS
    for k in range(N_SHARDS):
        pq.write_table(table.filter(shard_of == k), copy / c.EVENTS_DIR / f"{k}.parquet")
    return copy


def ehr_files(cache_dir) -> dict[str, bytes]:
    """Every file of the EHR cache shards and of the prepared folders' EHR index, by name."""
    files = sorted(p for p in cache_dir.rglob("*") if p.is_file() and ("ehr" in p.name or "/ehr/" in str(p)))
    return {p.relative_to(cache_dir).as_posix(): p.read_bytes() for p in files}


def dense(folder):
    vocab = json.loads((folder / "vocab.json").read_text())
    cache = EhrCache(folder, vocab)
    return cache.batch(np.arange(len(cache.index)), width=16)


def test_map_reduce_vocabulary_equals_one_pass(tiny_cohort, sharded, tmp_path):
    one = prepare(tiny_cohort, tmp_path / "one", cfg())
    three = prepare(sharded, tmp_path / "three", cfg())
    vocab = json.loads((three / "vocab.json").read_text())
    assert vocab == json.loads((one / "vocab.json").read_text())
    for name, array in dense(three).items():
        np.testing.assert_array_equal(array, dense(one)[name])

    # The same fit written out plainly over all train events before prediction time.
    events = pq.read_table(tiny_cohort / c.EVENTS_DIR / "0.parquet").to_pandas()
    labels = pq.read_table(tiny_cohort / "labels/cvd_onset_1y.parquet").to_pandas()
    splits = pq.read_table(tiny_cohort / c.SUBJECT_SPLITS).to_pandas()
    train = set(splits.subject_id[splits.split == "train"]) & set(labels.subject_id)
    pred = events.subject_id.map(labels.set_index("subject_id").prediction_time)
    kept = events[
        events.subject_id.isin(train)
        & (events.time.isna() | (events.time < pred))
        & ~events.code.str.startswith("NOTE//")
    ]
    subjects = kept.groupby("code").subject_id.nunique()
    assert vocab["codes"] == sorted(subjects.index[subjects >= 5])
    valued = kept.dropna(subset=["numeric_value"])
    stats = valued.groupby("code").numeric_value.agg(["mean", "std", "nunique"])
    for code, (mean, sd) in vocab["code_stats"].items():
        assert mean == pytest.approx(stats.loc[code, "mean"], abs=1e-5)
        n = (valued.code == code).sum()
        assert sd == pytest.approx(stats.loc[code, "std"] * np.sqrt((n - 1) / n), rel=1e-4, abs=1e-5)


def test_same_bytes_whatever_the_number_of_workers(sharded, tmp_path):
    a = prepare(sharded, tmp_path / "a", cfg(), workers=1)
    b = prepare(sharded, tmp_path / "b", cfg(), workers=2)
    assert a.name == b.name
    files_a, files_b = ehr_files(tmp_path / "a"), ehr_files(tmp_path / "b")
    assert len([f for f in files_a if f.endswith("code.npy")]) == N_SHARDS
    assert files_a == files_b


def test_corrupt_shard_is_named_and_the_rest_kept_for_the_rerun(sharded, tmp_path):
    copy = shutil.copytree(sharded, tmp_path / "cohort")
    bad = copy / c.EVENTS_DIR / "1.parquet"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])  # truncated: no parquet footer
    with pytest.raises(MedweaveError) as err:
        prepare(copy, tmp_path / "cache", cfg(), workers=1)
    message = str(err.value)
    assert "\n" not in message and "EHR shard data/1.parquet failed" in message
    assert "2 of 3 shard(s) are prepared and kept" in message
    store = tmp_path / "cache" / "ehr"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in store.glob(f"*/{DONE}")}
    assert len(finished) == 2
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if ".tmp-" in p.name]
    assert not leftovers and not list((tmp_path / "cache").glob("*/manifest.json"))

    bad.write_bytes(good_bytes)  # fixed: only that shard is prepared again
    out = prepare(copy, tmp_path / "cache", cfg(), workers=1)
    again = {p.parent.name: p.stat().st_mtime_ns for p in store.glob(f"*/{DONE}")}
    assert len(again) == 3 and all(again[k] == t for k, t in finished.items())
    reference = prepare(sharded, tmp_path / "reference", cfg())
    for name, array in dense(out).items():
        np.testing.assert_array_equal(array, dense(reference)[name])


def test_batches_hold_each_subjects_last_events_before_prediction(sharded, tmp_path):
    """The served events, checked against a plain per-subject reading of the cohort: the last
    events, and the birth event however long the history (it alone carries age)."""
    out = prepare(sharded, tmp_path, cfg(max_events=4))
    vocab = json.loads((out / "vocab.json").read_text())
    ids = np.load(out / "subjects.npz")["subject_id"]
    batch = EhrCache(out, vocab).batch(np.array([0, 5, 7]))
    events = pd.concat(pq.read_table(p).to_pandas() for p in sorted((sharded / "data").glob("*.parquet")))
    labels = pq.read_table(sharded / "labels/cvd_onset_1y.parquet").to_pandas().set_index("subject_id")
    for i, row in enumerate([0, 5, 7]):
        mine = events[(events.subject_id == ids[row]) & ~events.code.str.startswith("NOTE//")]
        before = mine[mine.time < labels.prediction_time[ids[row]]].sort_values("time", kind="stable")
        births = [code for code in before.code if code == c.BIRTH_CODE]
        others = [*(code for code in before.code if code != c.BIRTH_CODE), *mine[mine.time.isna()].code]
        assert len(births) == 1 and len(others) > 4  # the birth event would be truncated away
        expected = births + others[-(4 - len(births)) :]
        index = {code: k + 2 for k, code in enumerate(vocab["codes"])}
        got = batch["codes"][i][batch["codes"][i] > 0].tolist()
        assert got == [index.get(code, 1) for code in expected]
        born = batch["days"][i][0]  # the birth event's days before prediction: the age
        assert born == pytest.approx((labels.prediction_time[ids[row]] - before.time.iloc[0]).days, abs=1)


def test_vocabulary_keeps_a_pretrained_checkpoints_codes_however_rare(tiny_cohort, tmp_path):
    """Codes a checkpoint knows enter the task vocabulary below min_subjects (values pass raw);
    without keep_codes they map to unknown."""
    # a cut no code of the 120-subject cohort passes: every code is rare in this task's train split
    cut = json.loads(
        (prepare(tiny_cohort, tmp_path / "a", cfg(min_subjects=1000)) / "vocab.json").read_text()
    )
    wide = json.loads((prepare(tiny_cohort, tmp_path / "b", cfg(min_subjects=1)) / "vocab.json").read_text())
    rare = sorted(set(wide["codes"]) - set(cut["codes"]))
    rare_valued = [n for n in rare if n in wide["code_stats"]]
    assert not cut["codes"] and rare and rare_valued
    keep = (rare[0], rare_valued[0], "CODE//NEVER_IN_THIS_COHORT")
    out = prepare(tiny_cohort, tmp_path / "c", cfg(min_subjects=1000, keep_codes=keep))
    kept = json.loads((out / "vocab.json").read_text())
    assert kept["codes"] == sorted({rare[0], rare_valued[0]})
    # too few subjects for statistics of their own: values pass raw
    assert kept["code_stats"] == {n: [0.0, 1.0] for n in kept["codes"] if n in wide["code_stats"]}
    assert rare_valued[0] in kept["code_stats"]
    batch = dense(out)
    for name in (rare[0], rare_valued[0]):
        assert (batch["codes"] == kept["codes"].index(name) + 2).any()
    valued = batch["codes"] == kept["codes"].index(rare_valued[0]) + 2
    assert np.isfinite(batch["values"][valued]).any()  # raw values, not dropped for want of statistics


@pytest.mark.slow  # composes the train config (Hydra) three times
def test_slurm_array_parts_make_the_same_cache_as_one_run(sharded, tmp_path, monkeypatch, smoke_cfg):
    """Array tasks each prepare their share (medweave-prepare under SLURM_ARRAY_*), the job after
    them reduces: the same cache files as one local run."""
    from medweave.cli.prepare import prepare as prepare_cli

    overrides = (
        f"data.root={sharded}",
        "data.modalities=[ehr_codes]",
        f"paths.cache_dir={tmp_path / 'array'}",
    )
    cfg = smoke_cfg(*overrides)
    for task in (1, 2):  # --array=1-2: SLURM_ARRAY_TASK_MIN is 1
        for name, value in {"COUNT": "2", "ID": str(task), "MIN": "1"}.items():
            monkeypatch.setenv(f"SLURM_ARRAY_TASK_{name}", value)
        prepare_cli(cfg)
        assert not list((tmp_path / "array").glob("*/manifest.json"))  # shards only
    assert len(list((tmp_path / "array" / "ehr").glob(f"*/{DONE}"))) == N_SHARDS
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "1")  # the reduce job
    prepare_cli(cfg)
    prepare_cli(smoke_cfg(*overrides[:2], f"paths.cache_dir={tmp_path}/local"))
    assert ehr_files(tmp_path / "array") == ehr_files(tmp_path / "local")


def test_slurm_part_of_a_stepped_array_and_a_refused_list(monkeypatch):
    from medweave.cli.prepare import slurm_part

    for name, value in {"COUNT": "3", "MIN": "0", "STEP": "2", "ID": "4"}.items():  # --array=0-4:2
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{name}", value)
    assert slurm_part() == (2, 3)
    monkeypatch.delenv("SLURM_ARRAY_TASK_STEP")
    for name, value in {"MIN": "1", "ID": "5"}.items():  # --array=1,3,5
        monkeypatch.setenv(f"SLURM_ARRAY_TASK_{name}", value)
    with pytest.raises(MedweaveError, match="as a range"):
        slurm_part()


def test_distinct_subjects_by_flag_table_and_by_sort_agree_with_unique_pairs(monkeypatch):
    from medweave.data.ehr import shards

    monkeypatch.setattr(shards, "FLAGS", 2000)  # blocks of 2000 // codes subjects
    rng = np.random.default_rng(0)
    # (events, rows, codes): a flag table of one block; of several blocks; too many codes: the sort
    for n_events, n_rows, n_codes in ((5000, 30, 40), (5000, 300, 40), (3000, 60, 50_000)):
        rows = np.sort(rng.integers(0, n_rows, n_events)) * 7 + 3  # sorted, with gaps, as labelled rows
        code = rng.integers(0, n_codes, n_events).astype(np.int32)
        valued = rng.random(n_events) < 0.3
        subjects, valued_subjects = shards._distinct_subjects(code, rows, valued, n_codes)
        for got, mask in ((subjects, np.ones(n_events, bool)), (valued_subjects, valued)):
            pairs = np.unique(rows[mask].astype(np.int64) * n_codes + code[mask])
            np.testing.assert_array_equal(got, np.bincount(pairs % n_codes, minlength=n_codes))
