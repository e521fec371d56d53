"""The few-shot draws (as EHRSHOT): k positive and k negative train subjects, and as many of each
from the tuning split, drawn once per (k, draw) and shared by every arm.

A draw is rows of the prepared cache (PreparedCohort.rows). ``k = "all"`` is every labelled train
and tuning subject (one draw: there is nothing to resample). The held-out split is never drawn
from: every arm is scored on all of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from medweave.errors import MedweaveError

log = logging.getLogger("medweave")

ALL = "all"


@dataclass(frozen=True)
class Draw:
    """One training set: ``k`` (an int or "all"), its replicate ``draw``, and the cache rows."""

    k: int | str
    draw: int
    train: np.ndarray
    tuning: np.ndarray


def check_ks(ks: list, target: np.ndarray, train_rows: np.ndarray) -> list:
    """``ks`` as ints (and "all"), refusing a k larger than train's positives or negatives."""
    out = []
    y = target[train_rows] > 0
    positives, negatives = int(y.sum()), int((~y).sum())
    for k in ks:
        if str(k) == ALL:
            out.append(ALL)
            continue
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MedweaveError(f"fewshot.ks: {k!r} is not a positive integer or 'all'")
        if k > positives or k > negatives:
            raise MedweaveError(
                f"fewshot.ks: k={k} is more than the train split has: {positives} positive and "
                f"{negatives} negative subjects; use k <= {min(positives, negatives)}"
            )
        out.append(k)
    return out


def _pick(rng: np.random.Generator, rows: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """k positive and k negative rows (fewer if the split has fewer), sorted."""
    y = target[rows] > 0
    parts = [rng.choice(rows[cls], size=min(k, int(cls.sum())), replace=False) for cls in (y, ~y)]
    return np.sort(np.concatenate(parts))


def make_draws(
    target: np.ndarray, train_rows: np.ndarray, tuning_rows: np.ndarray, ks: list, n_draws: int, seed: int
) -> list[Draw]:
    """Every (k, draw) training set, draw by draw ("all" last). Each has its own generator, seeded
    by (seed, k, draw): adding a k or a draw leaves the others as they were, and every arm sees
    the same subjects."""
    ks = check_ks(ks, target, train_rows)
    y_tune = target[tuning_rows] > 0
    short = [k for k in ks if k != ALL and (k > y_tune.sum() or k > (~y_tune).sum())]
    if short:
        log.warning(
            "the tuning split has %d positive and %d negative subjects: for k=%s it gives all it has",
            int(y_tune.sum()),
            int((~y_tune).sum()),
            short,
        )
    # Draw-major: a sweep cut short has whole curves for its first draws.
    draws = []
    for d in range(n_draws):
        for k in ks:
            if k != ALL:
                rng = np.random.default_rng([seed, k, d])
                train, tuning = _pick(rng, train_rows, target, k), _pick(rng, tuning_rows, target, k)
                draws.append(Draw(k, d, train, tuning))
    if ALL in ks:  # last: the costliest run
        draws.append(Draw(ALL, 0, np.sort(train_rows), np.sort(tuning_rows)))
    return draws
