"""Onset within a horizon and time to event with censoring, from one draw per disease.

Each disease has a constant hazard lambda chosen so that P(T <= horizon) equals the disease's
horizon risk p = sigmoid(liability): lambda = -log(1 - p) / horizon. The event time comes from the
same uniform draw u that decides the binary label (T = -log(1 - u) / lambda), so "onset within the
horizon" and "T <= horizon" always agree, and the true risk ranks people by hazard for both.

Survival labels are censored, as registries are: at the data cutoff (administrative) and at loss
to follow-up (emigration, death from other causes), exponential with ``loss_per_year``. Binary
labels assume complete follow-up over the horizon, as national registries give.
"""

from __future__ import annotations

import numpy as np

DAY = np.timedelta64(1, "D")


def event_days(risk: float, u: float, horizon_days: int) -> float:
    """Days from prediction_time to onset; <= horizon_days exactly when u < risk."""
    hazard = -np.log1p(-min(risk, 1 - 1e-12)) / horizon_days
    return float(-np.log1p(-u) / hazard)


def censoring_days(
    prediction_time: np.datetime64, cutoff: np.datetime64, loss_per_year: float, rng: np.random.Generator
) -> float:
    """Days of follow-up before censoring: the earlier of the data cutoff and loss to follow-up."""
    administrative = float((cutoff - prediction_time) / DAY)
    lost = rng.exponential(365.25 / loss_per_year) if loss_per_year > 0 else np.inf
    return float(min(administrative, lost))
