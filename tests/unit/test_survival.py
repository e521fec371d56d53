"""Survival heads and the C-index, checked against scikit-survival and hand counts."""

import numpy as np
import pytest
import torch

from medweave.metrics.survival import ConcordanceIndex, harrell_c
from medweave.models.heads.survival import CoxHead, DiscreteTimeHead, cox_efron_loss


def _tied_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    beta = np.array([0.8, -0.5, 0.0])
    time = np.ceil(rng.exponential(np.exp(-x @ beta)) * 4)  # few distinct times: many ties
    censor = np.ceil(rng.exponential(2.0, n) * 4)
    return x, np.minimum(time, censor), time <= censor


def _fit(loss_fn, x, time, event) -> np.ndarray:
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    xt, tt, et = (torch.tensor(a) for a in (x, time, event))
    opt = torch.optim.LBFGS([beta], max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(xt @ beta, tt, et)
        loss.backward()
        return loss

    opt.step(closure)
    return beta.detach().numpy()


def test_cox_efron_fit_matches_scikit_survival():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    x, time, event = _tied_data()
    assert len(np.unique(time[event])) < event.sum() / 5  # heavily tied
    ours = _fit(cox_efron_loss, x, time, event)
    y = Surv.from_arrays(event, time)
    efron = CoxPHSurvivalAnalysis(ties="efron", alpha=0.0).fit(x, y).coef_
    breslow = CoxPHSurvivalAnalysis(ties="breslow", alpha=0.0).fit(x, y).coef_
    np.testing.assert_allclose(ours, efron, atol=1e-4)
    assert np.abs(efron - breslow).max() > 0.02  # ties matter here, so the check has teeth


def test_cox_loss_without_events_is_zero_and_keeps_the_graph():
    log_risk = torch.randn(5, requires_grad=True)
    loss = cox_efron_loss(log_risk, torch.arange(5.0), torch.zeros(5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and log_risk.grad is not None


def test_discrete_time_loss_by_hand():
    head = DiscreteTimeHead(in_dim=1, edges=[0, 10, 20, 30])
    logits = torch.tensor([[0.1, -0.3, 0.5], [0.2, 0.0, -1.0], [0.3, 0.4, 0.5]])
    batch = {"times": torch.tensor([15.0, 25.0, 40.0]), "targets": torch.tensor([1.0, 0.0, 1.0])}
    h = torch.sigmoid(logits)
    by_hand = (
        (
            -torch.log(1 - h[0, 0])
            - torch.log(h[0, 1])  # event in bin 1
            - torch.log(1 - h[1, :2]).sum()  # censored during bin 2: watched through bins 0-1 only
            - torch.log(1 - h[2]).sum()  # event after the last edge: survived every bin
        )
        / 3
    )
    assert head.loss(logits, batch).item() == pytest.approx(by_hand.item(), rel=1e-6)
    survival = head.survival(logits)
    assert torch.all(survival[:, 1:] <= survival[:, :-1])
    np.testing.assert_allclose(head.score(logits), -torch.log(survival[:, -1]), rtol=1e-5)


def test_discrete_time_edges_are_checked():
    with pytest.raises(ValueError, match="increasing bin edges"):
        DiscreteTimeHead(in_dim=4, edges=[0, 365, 200])


def test_concordance_metric_gathers_batches_and_matches_a_pairwise_count():
    _, time, event = _tied_data(n=200, seed=3)
    score = -time + np.random.default_rng(0).normal(0, 2, len(time))
    metric = ConcordanceIndex()
    for part in np.array_split(np.arange(len(time)), 3):
        metric.update(torch.tensor(score[part]), torch.tensor(time[part]), torch.tensor(event[part]))
    concordant = comparable = 0.0
    for i in np.flatnonzero(event):
        # at risk after an event at t: later times, and those censored at t itself
        later = (time > time[i]) | ((time == time[i]) & ~event)
        comparable += later.sum()
        concordant += (score[i] > score[later]).sum() + 0.5 * (score[i] == score[later]).sum()
    assert metric.compute().item() == pytest.approx(concordant / comparable, abs=1e-6)
    assert harrell_c(event, time, score) == pytest.approx(concordant / comparable, abs=1e-6)
    assert np.isnan(harrell_c(np.zeros(3, bool), np.arange(3.0), np.arange(3.0)))


def test_cox_head_scores_are_log_risks():
    head = CoxHead(in_dim=4)
    out = head(torch.randn(6, 4))
    assert out.shape == (6,) and torch.equal(head.score(out), out)
