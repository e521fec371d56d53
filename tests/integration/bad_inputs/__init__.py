"""The bad-input corpus: broken files as real exports come, one module per format.

Each module lists ``CASES``. A case breaks a fresh copy of the tiny sandbox cohort (or writes its
own import inputs) and returns the step that must notice. test_bad_inputs.py runs every case twice:
strict, where the step must raise a MedweaveError whose message names the file, the row or field,
and what was expected, leaving nothing half-written; and lenient (when the fault is one a user may
skip), where the step must finish, warn with a count, and leave the offending rows out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Case.make(cohort, work) breaks things and returns run(lenient) -> Path | None (what it wrote).
Make = Callable[[Path, Path], Callable[[bool], object]]


@dataclass(frozen=True)
class Case:
    id: str
    make: Make
    expect: tuple[str, ...]  # substrings of the strict error: the file, the row or field, the expectation
    lenient: bool = True  # False: no mode can go on (an unreadable only file, a broken config)
    check_lenient: Callable[[object], None] | None = None  # inspects what a lenient run wrote


def prepare_step(cohort: Path, work: Path, modalities=("ehr_codes",), task="cvd_onset_1y", **options):
    """run(lenient) that prepares ``cohort`` into work/cache and returns the cache folder."""
    from medweave.data.prepare import PrepareConfig, prepare

    def run(lenient: bool):
        cfg = PrepareConfig(
            task=task, modalities=tuple(modalities), lenient=lenient, image_size=32, **options
        )
        return prepare(cohort, work / "cache", cfg)

    return run
