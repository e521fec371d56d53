"""Registry mode only: liver disease (ICD-10 K76) and deaths (MEDS_DEATH), from a random stream of their own.

A registry records who died and of what they were ill; issue 14's example task, death within five
years of a first K76 diagnosis (configs/aces/death_5y_after_k76.yaml), needs both. The people are
those of registry.py (the cohort is everyone alive at their index visit in 2021), and:

- **K76** (other diseases of liver, mostly fatty liver disease) is a chronic condition tied to the
  metabolic state m as the metabolic ones in ``registry.CHRONIC`` are: log-odds of ever having it
  ``LIVER_LOGIT[0] + LIVER_LOGIT[1] m``, onset at about ``LIVER_ONSET_AGE`` (3 years earlier per unit
  of m, +- 10), then ``LIVER_CONTACTS`` diagnosis codes a year until the record ends.
- **Death** comes after the index visit only (everyone was alive then), at a Gompertz hazard:
  ``DEATH_RATE_AT_60`` a year at age 60, times ``exp(GOMPERTZ)`` per year of age, times
  ``CHRONIC_HR`` per chronic condition (``registry.CHRONIC``) present at the time, ``LIVER_HR``
  once K76 has begun, ``MALE_HR`` for men and ``exp(FRAILTY_LOG_HR x frailty)``; conditions that
  begin during follow-up raise it from then on. A death ends the record: nothing is recorded
  after it (no history, no outcome, no loss to follow-up), and it censors the survival labels as
  loss to follow-up does. Loss to follow-up (emigration) first hides the death; the data cutoff
  hides a later one.

The sandbox's own labels are the latent model's and stay as they were: a yes/no onset within the
horizon is true even for a person who died or was lost before it, and the oracle ceilings are
unchanged (deaths do not depend on the diseases' latent causes beyond m, age and sex). What the
record shows, and so what ACES labels from it, stops at death.

Randomness: ``SeedSequence(seed, spawn_key=(block, 2))``, apart from the block's main stream, so
the rest of the history is drawn as before; only what a death cuts off goes.
"""

from __future__ import annotations

import numpy as np

LIVER, DEATH = "ICD10//K76", "MEDS_DEATH"
DESCRIPTIONS = {LIVER: "Other diseases of liver", DEATH: "Death (MEDS)"}
LIVER_LOGIT = (-2.3, 1.0)
LIVER_ONSET_AGE, LIVER_ONSET_SD = 62.0, 10.0
LIVER_CONTACTS = 2.0  # K76 diagnoses a year after onset (before the calibration constant)
DEATH_RATE_AT_60 = 0.003  # deaths a year at age 60 with no condition, a woman of average frailty
GOMPERTZ = 0.09  # the hazard grows 9 % a year of age (doubles in about 8 years)
CHRONIC_HR, LIVER_HR, MALE_HR = 1.2, 10.0, 1.4
FRAILTY_LOG_HR = 0.3
STEPS_PER_YEAR = 12  # the hazard is held constant over each month of follow-up
SECOND_PER_YEAR = 365.25 * 86400
NEVER = np.iinfo(np.int64).max // 2


def stream(seed: int, block: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, 2)))


def draw_liver_onset(rng: np.random.Generator, birth: np.ndarray, metabolic: np.ndarray) -> np.ndarray:
    """K76 onset times (int64 seconds), or NEVER."""
    n = len(birth)
    a, b = LIVER_LOGIT
    has = rng.random(n) < 1 / (1 + np.exp(-(a + b * metabolic)))
    age = LIVER_ONSET_AGE - 3.0 * metabolic + rng.normal(0.0, LIVER_ONSET_SD, n)
    onset = birth + (np.maximum(age, 0.0) * SECOND_PER_YEAR).astype(np.int64)
    return np.where(has, onset, NEVER)


def draw_death(rng: np.random.Generator, people, liver_onset: np.ndarray, until: int) -> np.ndarray:
    """Death times (int64 seconds) in (prediction time, ``until``), else NEVER: a month at a time,
    the cumulative hazard against an Exp(1) draw, the time within the month by linear interpolation."""
    n = len(people.birth)
    years = max((until - int(people.prediction.min())) / SECOND_PER_YEAR, 0.0)
    steps = int(np.ceil(years * STEPS_PER_YEAR))
    dt = SECOND_PER_YEAR / STEPS_PER_YEAR
    base = (
        np.log(DEATH_RATE_AT_60)
        + np.log(MALE_HR) * people.male
        + FRAILTY_LOG_HR * people.frailty
        - GOMPERTZ * 60.0
    )
    target = rng.exponential(1.0, n)
    total = np.zeros(n)
    death = np.full(n, NEVER, np.int64)
    for s in range(steps):
        t0 = people.prediction + (s * dt)
        mid = t0 + dt / 2
        age = (mid - people.birth) / SECOND_PER_YEAR
        burden = (people.chronic_onset <= mid[:, None]).sum(1)
        log_h = base + GOMPERTZ * age + np.log(CHRONIC_HR) * burden + np.log(LIVER_HR) * (liver_onset <= mid)
        step = np.exp(log_h) * dt / SECOND_PER_YEAR
        crossed = (death == NEVER) & (total + step >= target)
        frac = (target[crossed] - total[crossed]) / step[crossed]
        death[crossed] = (t0[crossed] + frac * dt).astype(np.int64)
        total += step
    return np.where(death < until, death, NEVER)


def liver_years(liver_onset: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """When K76 codes start within the record (onset or the record's start) and for how many years."""
    first = np.maximum(liver_onset, start)
    return first, np.maximum(end - first, 0) / SECOND_PER_YEAR
