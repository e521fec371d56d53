"""Harrell's C-index as a torchmetrics Metric: scores, times and events are gathered from every
rank ("cat") and the index is computed once by scikit-survival, so DDP gives the exact figure."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat


class ConcordanceIndex(Metric):
    """Harrell's C: among comparable pairs (an event at t, and a subject still at risk after t:
    a later time, or censored at t), the share the score orders correctly (higher score for the
    event); tied scores count one half."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("times", default=[], dist_reduce_fx="cat")
        self.add_state("events", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> None:
        self.scores.append(scores.float())
        self.times.append(times.float())
        self.events.append(events.bool())

    def compute(self) -> torch.Tensor:
        scores, times, events = (
            dim_zero_cat(s).cpu().numpy() for s in (self.scores, self.times, self.events)
        )
        return torch.tensor(harrell_c(events, times, scores), dtype=torch.float32)


def harrell_c(events: np.ndarray, times: np.ndarray, scores: np.ndarray) -> float:
    """NaN when no pair is comparable (no event, or every event at the latest time)."""
    from sksurv.metrics import concordance_index_censored

    events = np.asarray(events, bool)
    if not events.any():
        return float("nan")
    try:
        return float(
            concordance_index_censored(events, np.asarray(times, float), np.asarray(scores, float))[0]
        )
    except ValueError:  # "All samples are censored" and friends
        return float("nan")


def c_index_collection() -> MetricCollection:
    return MetricCollection({"c_index": ConcordanceIndex()})
