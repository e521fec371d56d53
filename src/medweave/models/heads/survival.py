"""Time-to-event heads: Cox proportional hazards and a discrete-time (logistic) hazard.

Both read ``batch["times"]`` (days to event or censoring) and ``batch["targets"]`` (1 if the
event was seen) and give a risk score where higher means an earlier event, so one C-index serves
both. The discrete-time head also gives survival curves at its bin edges.
"""

from __future__ import annotations

import torch
from torch import nn

from medweave.metrics.survival import c_index_collection
from medweave.models.heads.linear import LinearHead


def cox_efron_loss(log_risk: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Efron's handling of tied event times, per event.

    For each distinct event time t with d events D and risk set R = {i: t_i >= t}:
        sum_{i in D} eta_i - sum_{l=0}^{d-1} log(sum_R exp(eta) - l/d * sum_D exp(eta))
    """
    events = events.bool()
    if not events.any():
        return log_risk.sum() * 0.0  # no event in the batch: nothing to compare, keep the graph
    shift = log_risk.detach().max()
    risk = torch.exp(log_risk - shift)
    event_times, group = torch.unique(times[events], return_inverse=True)  # [G], [E]
    at_risk = (times[None, :] >= event_times[:, None]).to(risk.dtype)  # [G, B]
    sum_risk_set = at_risk @ risk  # [G]
    sum_tied = torch.zeros_like(event_times, dtype=risk.dtype).index_add(0, group, risk[events])
    n_tied = torch.zeros_like(event_times, dtype=risk.dtype).index_add(
        0, group, torch.ones_like(risk[events])
    )
    sum_eta = torch.zeros_like(event_times, dtype=risk.dtype).index_add(0, group, log_risk[events] - shift)
    steps = torch.arange(int(n_tied.max().item()), device=risk.device, dtype=risk.dtype)  # l
    fraction = steps[None, :] / n_tied[:, None]  # [G, L]
    valid = steps[None, :] < n_tied[:, None]
    denominators = (sum_risk_set[:, None] - fraction * sum_tied[:, None]).clamp_min(1e-12)
    log_denominators = torch.where(valid, torch.log(denominators), torch.zeros_like(denominators)).sum(1)
    return -(sum_eta - log_denominators).sum() / events.sum()


class CoxHead(LinearHead):
    """One log hazard ratio per subject, trained on the partial likelihood (Efron ties).

    Args:
        in_dim: width of the fused representation.
        dropout: dropout before the output layer.
    """

    kind = "survival"

    def __init__(self, in_dim: int, dropout: float = 0.1):
        super().__init__(in_dim, 1, dropout)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        return cox_efron_loss(outputs.float(), batch["times"], batch["targets"])

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs

    def metrics(self):
        return c_index_collection()

    def metric_args(self, scores: torch.Tensor, batch: dict) -> tuple:
        return scores, batch["times"], batch["targets"].bool()


class DiscreteTimeHead(LinearHead):
    """A hazard per time bin (logistic hazard, as in Gensheimer & Narasimhan 2019 and pycox).

    A subject whose time falls in bin k contributes "survived" for the bins before k and, if the
    event was seen, "event" in bin k. A subject censored during bin k was not watched through it,
    so bin k does not count (pycox moves censored times to the bin's start for the same reason).
    Times past the last edge count as survived through every bin. ``score`` is the cumulative
    hazard at the last edge.

    Args:
        in_dim: width of the fused representation.
        edges: bin edges in days, increasing, starting at 0 (e.g. [0, 365, 730, 1095, 1461]).
        dropout: dropout before the output layer.
    """

    kind = "survival"

    def __init__(self, in_dim: int, edges: list[float], dropout: float = 0.1):
        edges = [float(e) for e in edges]
        if len(edges) < 3 or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"edges={edges}: expected increasing bin edges in days starting at 0 (2+ bins)")
        super().__init__(in_dim, len(edges) - 1, dropout)  # [B, K] hazard logits
        self.register_buffer("edges", torch.tensor(edges), persistent=False)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        times, events = batch["times"], batch["targets"].bool()
        n_bins = outputs.shape[1]
        bin_of = (torch.bucketize(times, self.edges[1:], right=False)).clamp(max=n_bins - 1)
        beyond = times > self.edges[-1]
        bins = torch.arange(n_bins, device=outputs.device)
        through = bins[None, :] < bin_of[:, None]  # bins the subject was watched through
        event_bin = (bins[None, :] == bin_of[:, None]) & (events & ~beyond)[:, None]
        seen = through | event_bin | beyond[:, None]
        label = event_bin
        bce = nn.functional.binary_cross_entropy_with_logits(outputs.float(), label.float(), reduction="none")
        return (bce * seen).sum() / len(times)

    def survival(self, outputs: torch.Tensor) -> torch.Tensor:
        """S(t) at each bin's right edge, [B, K]."""
        return torch.cumprod(1 - torch.sigmoid(outputs.float()), dim=1)

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        return -nn.functional.logsigmoid(-outputs.float()).sum(1)  # -log S(last edge)

    def metrics(self):
        return c_index_collection()

    def metric_args(self, scores: torch.Tensor, batch: dict) -> tuple:
        return scores, batch["times"], batch["targets"].bool()
