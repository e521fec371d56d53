"""Per-modality stores (data/store.py): tasks share one copy of each modality's arrays, and each
task still sees exactly its own samples' values."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from medweave.data import contract as c
from medweave.data import store
from medweave.data.prepare import PrepareConfig, prepare
from medweave.data.readers import dicom, meds, vcf

MODALITIES = ("text", "image", "genomics")


def cfg(task: str, task_type: str = "binary", **kw) -> PrepareConfig:
    return PrepareConfig(task=task, modalities=MODALITIES, task_type=task_type, image_size=32, **kw)


def stores(cache, modality):
    return sorted(p for p in (cache / modality).iterdir() if p.is_dir())


def stamp(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.fixture(scope="module")
def two_tasks(tiny_cohort, tmp_path_factory):
    """A binary and a survival task (same subjects, same prediction times) into one cache."""
    cache = tmp_path_factory.mktemp("cache")
    binary = prepare(tiny_cohort, cache, cfg("cvd_onset_1y"))
    first = {m: stamp(stores(cache, m)[0] / f"{name}.npy") for m, name in store_files().items()}
    survival = prepare(tiny_cohort, cache, cfg("cvd_survival", "survival"))
    return cache, binary, survival, first


def store_files():
    return {"image": "image", "genomics": "genomics", "text": "text_ids"}


def test_two_tasks_share_one_store_per_modality_built_once(two_tasks):
    cache, binary, survival, first = two_tasks
    assert binary != survival  # two task folders...
    for modality, name in store_files().items():
        (folder,) = stores(cache, modality)  # ...one store each
        assert stamp(folder / f"{name}.npy") == first[modality], f"{modality} store written again"
        for task in (binary, survival):
            assert store.linked(task)[name]["store"] == folder.relative_to(cache).as_posix()
    task_bytes = sum(p.stat().st_size for p in survival.rglob("*") if p.is_file())
    store_bytes = sum(p.stat().st_size for m in store_files() for p in (cache / m).rglob("*") if p.is_file())
    assert task_bytes < store_bytes / 10  # the task holds indexes, not arrays


def test_each_task_sees_its_latest_image_read_directly(tiny_cohort, two_tasks):
    """The served image of every sample is its latest index image before prediction time,
    read and resized here without the store."""
    import torch
    import torch.nn.functional as F

    _, binary, _, _ = two_tasks
    subjects = np.load(binary / "subjects.npz")
    labels = pq.read_table(tiny_cohort / "labels/cvd_onset_1y.parquet")
    pred = dict(
        zip(
            labels.column("subject_id").to_pylist(),
            meds.microseconds(labels.column("prediction_time")),
            strict=True,
        )
    )
    index = meds.read_imaging_index(tiny_cohort)
    sid, when = index.column("subject_id").to_numpy(), meds.microseconds(index.column("time"))
    path = index.column("path").to_pylist()
    served = np.asarray(store.open_arrays(binary)["image"])
    expected = np.zeros_like(served)
    for r, s in enumerate(subjects["subject_id"]):
        rows = [i for i in range(len(sid)) if sid[i] == s and when[i] < pred[s]]
        if rows:
            latest = max(rows, key=lambda i: (when[i], -i))
            pixels = dicom.read_image(tiny_cohort / c.IMAGING_DIR / path[latest])
            t = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]
            expected[r] = F.interpolate(t, size=(32, 32), mode="bilinear", antialias=True)[0].clamp(0, 1)
    assert np.array_equal(served, expected)
    assert np.array_equal(subjects["present_image"], expected.reshape(len(expected), -1).any(1))
    assert 0 < subjects["present_image"].sum() < len(served)


def test_each_task_sees_its_subjects_dosages_read_directly(tiny_cohort, two_tasks):
    _, binary, survival, _ = two_tasks
    read = vcf.read_many([tiny_cohort / c.VARIANTS_VCF])
    column = {v: j for j, v in enumerate(read.variant_ids)}
    sample = {int(s): i for i, s in enumerate(read.samples)}
    for folder in (binary, survival):
        vocab = json.loads((folder / "vocab.json").read_text())
        ids = np.load(folder / "subjects.npz")["subject_id"]
        served = np.asarray(store.open_arrays(folder)["genomics"])
        take = [column[v] for v in vocab["variants"]]
        expected = np.full_like(served, vcf.MISSING)
        for r, s in enumerate(ids):
            if int(s) in sample:
                expected[r] = read.dosages[sample[int(s)], take]
        assert np.array_equal(served, expected)
    assert (folder / "vocab.json").read_text() == (binary / "vocab.json").read_text()  # same fit


def test_other_train_subjects_refit_genomics_but_share_images(tiny_cohort, two_tasks):
    """A regression task on a subset fits genomics (QC, means) on its own train subjects: a
    second genomics store; the images depend on no fit and stay one store."""
    cache, binary, _, first = two_tasks
    subset = prepare(tiny_cohort, cache, cfg("hba1c_1y", "regression"))
    assert len(stores(cache, "genomics")) == 2 and len(stores(cache, "image")) == 1
    assert stamp(stores(cache, "image")[0] / "image.npy") == first["image"]
    a, b = np.load(binary / "subjects.npz"), np.load(subset / "subjects.npz")
    rows = np.searchsorted(a["subject_id"], b["subject_id"])
    same_time = a["prediction_time"][rows] == b["prediction_time"]
    theirs = np.asarray(store.open_arrays(binary)["image"])[rows]
    mine = np.asarray(store.open_arrays(subset)["image"])
    assert same_time.sum() > 10 and np.array_equal(mine[same_time], theirs[same_time])
    assert np.array_equal(store.open_arrays(subset)["image"].rows >= 0, b["present_image"])


def test_evaluation_with_a_checkpoint_vocab_projects_the_same_way(tiny_cohort, two_tasks):
    """vocab given (as medweave-eval passes the checkpoint's): its own genomics store, keyed by the
    vocabulary, serving the same values; vocab.json unchanged."""
    cache, binary, _, _ = two_tasks
    vocab = json.loads((binary / "vocab.json").read_text())
    evaluated = prepare(tiny_cohort, cache, cfg("cvd_survival", "survival"), vocab=vocab)
    assert json.loads((evaluated / "vocab.json").read_text()) == vocab
    for name in ("genomics", "text_ids", "image"):
        assert np.array_equal(
            np.asarray(store.open_arrays(evaluated)[name]), np.asarray(store.open_arrays(binary)[name])
        )


def test_build_once_under_concurrency_and_nothing_half_written_on_failure(tmp_path):
    built = []

    def build(tmp):
        built.append(1)
        time.sleep(0.2)
        np.save(tmp / "x.npy", np.arange(3))
        return {"n": 3}

    folder = tmp_path / "image" / "k"
    threads = [threading.Thread(target=store.build_once, args=(folder, build)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and store.build_once(folder, build) == ({"n": 3}, False)

    def fail(tmp):
        np.save(tmp / "x.npy", np.arange(3))
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.build_once(tmp_path / "image" / "other", fail)
    assert sorted(p.name for p in (tmp_path / "image").iterdir() if p.is_dir()) == ["k"]


def test_indexed_view_fills_missing_rows(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "t").mkdir()
    np.save(tmp_path / "s" / "a.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    store.link(tmp_path / "t", "a", tmp_path / "s", np.array([2, -1, 0, 2]), fill=-1)
    view = store.open_arrays(tmp_path / "t")["a"]
    assert view.shape == (4, 2) and len(view) == 4 and view.dtype == np.float32
    assert np.array_equal(view[np.array([1, 2])], [[-1, -1], [0, 1]])
    assert np.array_equal(view[1:], [[-1, -1], [0, 1], [4, 5]]) and np.array_equal(view[0], [4, 5])
    np.save(tmp_path / "s" / "e.npy", np.zeros((0, 2), np.int8))  # a store with no item
    store.link(tmp_path / "t", "e", tmp_path / "s", np.array([-1, -1]), fill=-1)
    assert np.array_equal(np.asarray(store.open_arrays(tmp_path / "t")["e"]), [[-1, -1], [-1, -1]])
