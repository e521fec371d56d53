"""Every case of the bad-input corpus (tests/integration/bad_inputs/), strict and lenient."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import shutil

import pytest

from medweave.data.store import FOLDERS
from medweave.errors import MedweaveError
from tests.integration import bad_inputs


def _cases():
    cases = []
    for info in sorted(pkgutil.iter_modules(bad_inputs.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{bad_inputs.__name__}.{info.name}")
        cases += [pytest.param(case, id=f"{info.name}-{case.id}") for case in module.CASES]
    return cases


CASES = _cases()


def test_the_corpus_is_large_and_ids_are_unique():
    ids = [p.id for p in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


def _half_written(work):
    """Temporary files or folders left behind, and caches or outputs without their end marker."""
    left = [p for p in work.rglob("*") if ".tmp" in p.name or p.name.endswith((".part", ".partial"))]
    cache = work / "cache"
    if cache.exists():
        for p in cache.iterdir():
            if p.name in FOLDERS:  # stores tasks share (EHR shards, images...): each complete or absent
                left += [s for s in p.iterdir() if s.is_dir() and not (s / "info.json").is_file()]
            elif p.is_dir():
                left.append(p)  # a cache folder exists only when complete
    out = work / "out"
    if out.exists():
        left.append(out)  # an import that failed writes no cohort at all
    return left


@pytest.fixture
def broken(tiny_cohort, tmp_path):
    def make(case):
        cohort = shutil.copytree(tiny_cohort, tmp_path / "cohort")
        work = tmp_path / "work"
        work.mkdir()
        return case.make(cohort, work), work

    return make


@pytest.mark.parametrize("case", CASES)
def test_strict_names_the_fault_and_leaves_nothing(case, broken):
    run, work = broken(case)
    with pytest.raises(MedweaveError) as err:
        run(False)
    message = str(err.value)
    for part in case.expect:
        assert part in message, f"{part!r} not in: {message}"
    assert not _half_written(work)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].lenient])
def test_lenient_skips_with_a_counted_warning(case, broken, caplog):
    run, work = broken(case)
    with caplog.at_level(logging.WARNING):
        wrote = run(True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("skipped" in w for w in warnings), warnings
    if case.check_lenient:
        case.check_lenient(wrote)
