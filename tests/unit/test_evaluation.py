"""Evaluation figures against the libraries that define them, and attribution by brute force."""

from itertools import permutations

import numpy as np
import pytest
import torch

from medweave.evaluation import metrics as M
from medweave.evaluation.bootstrap import with_ci


def test_ece_matches_torchmetrics():
    from torchmetrics.classification import BinaryCalibrationError

    rng = np.random.default_rng(0)
    p = rng.beta(2, 5, 2000)
    y = rng.random(2000) < np.clip(p * 1.3, 0, 1)  # miscalibrated on purpose
    ours = M.expected_calibration_error(y, p, n_bins=10)
    theirs = BinaryCalibrationError(n_bins=10, norm="l1")(torch.tensor(p), torch.tensor(y.astype(int))).item()
    assert ours == pytest.approx(theirs, abs=1e-5) and ours > 0.02


def test_binary_metrics_are_the_sklearn_figures():
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.3
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.2, 500), 0, 1)
    got = M.binary_metrics(y, p)
    assert got["auroc"] == roc_auc_score(y, p) and got["auprc"] == average_precision_score(y, p)
    assert got["brier"] == brier_score_loss(y, p)
    assert np.isnan(M.binary_metrics(np.zeros(5), np.linspace(0, 1, 5))["auroc"])


def test_breslow_survival_matches_scikit_survival():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 2))
    time = np.ceil(rng.exponential(np.exp(-x @ [0.7, -0.4])) * 20)  # ties
    censor = np.ceil(rng.exponential(1.5, 400) * 20)
    event, time = time <= censor, np.minimum(time, censor)
    model = CoxPHSurvivalAnalysis(ties="breslow").fit(x, Surv.from_arrays(event, time))
    score = model.predict(x)
    times = np.array([5.0, 10.0, 20.0, 30.0])
    theirs = np.stack([fn(times) for fn in model.predict_survival_function(x[:20])])
    ours = M.breslow_survival(score, time, event, score[:20], times)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_survival_metrics_are_the_scikit_survival_figures():
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc
    from sksurv.util import Surv

    rng = np.random.default_rng(3)
    risk = rng.normal(size=600)
    t = rng.exponential(np.exp(-risk) * 100)
    c = rng.exponential(150, 600)
    time, event = np.minimum(t, c), t <= c
    train, test = slice(0, 400), slice(400, 600)
    times = M.evaluation_times(time[test], event[test], time[train])
    got = M.survival_scores(time[test], event[test], risk[test], (time[train], event[train]), times)
    y_train, y_test = Surv.from_arrays(event[train], time[train]), Surv.from_arrays(event[test], time[test])
    assert got["c_index_uno"] == concordance_index_ipcw(y_train, y_test, risk[test], tau=times[-1])[0]
    assert got["td_auc"] == cumulative_dynamic_auc(y_train, y_test, risk[test], times)[1]
    assert 0.6 < got["c_index"] < 0.9 and np.isnan(got["ibs"])  # no curves given: no Brier score


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(4)
    y_small, y_large = rng.random(100) < 0.5, rng.random(2000) < 0.5

    def width(y):
        r = with_ci(lambda idx: {"mean": y[idx].mean()}, len(y), n_boot=300, seed=0)["mean"]
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        return r["ci_high"] - r["ci_low"]

    small, large = width(y_small), width(y_large)
    assert small > 3 * large  # about sqrt(20) = 4.5 times wider
    assert small == pytest.approx(2 * 1.96 * 0.5 / 10, rel=0.25)  # the normal-theory width


class _ToyModel(torch.nn.Module):
    """embed/fuse/head like MultimodalModule, with a fusion that has interactions."""

    def __init__(self):
        super().__init__()
        self.encoders = torch.nn.ModuleDict({n: torch.nn.Identity() for n in ("a", "b", "c")})

        class Head(torch.nn.Module):
            def forward(self, h):
                return h

            def score(self, out):
                return out

        self.head = Head()
        self.device = torch.device("cpu")

    def transfer_batch_to_device(self, batch, device, idx):
        return batch

    def embed(self, batch):
        return {n: batch[n] for n in self.encoders}

    def fuse(self, emb, masks):
        v = {n: emb[n][:, 0] * masks[n] for n in emb}
        return 1.0 + v["a"] + 2 * v["b"] + v["a"] * v["c"]  # an a-c interaction


def test_shapley_is_exact_sums_to_the_gap_and_ignores_absent_modalities():
    from medweave.evaluation.attribution import modality_shapley

    model = _ToyModel()
    x = {n: torch.randn(4, 1) for n in ("a", "b", "c")}
    masks = {
        "a_mask": torch.tensor([1, 1, 0, 1]),
        "b_mask": torch.tensor([1, 0, 1, 1]),
        "c_mask": torch.ones(4),
    }
    batch = {**x, **{k: v.bool() for k, v in masks.items()}}
    out = modality_shapley(model, [batch])
    phi = out["phi"]
    np.testing.assert_allclose(phi.sum(1), out["full"] - out["empty"], atol=1e-6)
    assert phi[2, 0] == 0 and phi[1, 1] == 0  # absent: exactly zero
    names = ["a", "b", "c"]
    for i in range(4):  # brute force: average marginal contribution over all orders
        present = {n for n in names if batch[f"{n}_mask"][i]}

        def v(subset, i=i, present=present):
            m = {n: torch.tensor([float(n in subset and n in present)]) for n in names}
            return model.fuse({n: x[n][i : i + 1] for n in names}, m).item()

        for j, name in enumerate(names):
            total = 0.0
            for order in permutations(names):
                before = set(order[: order.index(name)])
                total += v(before | {name}) - v(before)
            assert phi[i, j] == pytest.approx(total / 6, abs=1e-5)
