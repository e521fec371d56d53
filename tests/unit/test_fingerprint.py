"""The cohort fingerprint: stat-only by default, every byte on request, computed once per state."""

import os
import shutil

import pytest

from medweave.data import fingerprint as fp
from medweave.errors import MedweaveError
from medweave.folders import content_hash


@pytest.fixture
def cohort(tmp_path):
    root = tmp_path / "cohort"
    (root / "data").mkdir(parents=True)
    (root / "ground_truth").mkdir()
    (root / "data" / "0.parquet").write_bytes(b"events" * 100)
    (root / "labels.parquet").write_bytes(b"labels")
    (root / "ground_truth" / "risk.parquet").write_bytes(b"truth")
    return root


def _touch(path, ns):
    os.utime(path, ns=(ns, ns))


def test_quick_changes_with_any_write_even_at_the_same_size(cohort):
    before = fp.cohort_fingerprint(cohort)
    assert fp.cohort_fingerprint(cohort) == before
    target = cohort / "labels.parquet"
    stat = target.stat()
    target.write_bytes(b"LABELS")  # same size, new content
    _touch(target, stat.st_mtime_ns + 1_000_000)
    assert fp.cohort_fingerprint(cohort) != before


def test_quick_ignores_ground_truth_and_hidden_files_and_survives_a_copy_that_keeps_times(cohort, tmp_path):
    before = fp.cohort_fingerprint(cohort)
    (cohort / "ground_truth" / "risk.parquet").write_bytes(b"other truth")
    (cohort / ".lock").write_text("x")
    assert fp.cohort_fingerprint(cohort) == before
    copy = shutil.copytree(cohort, tmp_path / "copy")  # copy2 keeps modification times
    assert fp.cohort_fingerprint(copy) == before


def test_full_hashes_every_byte_once_per_state(cohort, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    full = fp.cohort_fingerprint(cohort, "full", cache)
    assert full == content_hash(cohort, skip=("ground_truth/",))
    calls = []
    monkeypatch.setattr(fp, "content_hash", lambda *a, **k: calls.append(a) or "recomputed")
    assert fp.cohort_fingerprint(cohort, "full", cache) == full and not calls  # kept: no byte read
    _touch(cohort / "labels.parquet", (cohort / "labels.parquet").stat().st_mtime_ns + 1_000_000)
    assert fp.cohort_fingerprint(cohort, "full", cache) == "recomputed" and len(calls) == 1


def test_unknown_mode_is_refused(cohort):
    with pytest.raises(MedweaveError, match="data.fingerprint=fast"):
        fp.cohort_fingerprint(cohort, "fast")
