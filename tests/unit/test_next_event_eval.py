"""The next-event evaluation's pieces on hand-made inputs: the risk formula, the per-code AUROC
table, the window a sampled event is appended to, and the foreseen share and its reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medweave.evaluation import next_event as ne
from medweave.evaluation import simulate as sim


def test_code_risks_are_competing_exponentials():
    log_rate = torch.tensor([math.log(2.0), math.log(0.1)])  # 2 and 0.1 events a year
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.8, 0.1, 0.1]]))
    risk = ne.code_risks(log_rate, logits, horizon_years=1.0)
    expected = 1 - np.exp(-np.array([[1.0, 0.5, 0.5], [0.08, 0.01, 0.01]]))
    np.testing.assert_allclose(risk.numpy(), expected, rtol=1e-5)
    # Longer horizons raise every risk; for a small one the risk is about rate p H.
    assert (ne.code_risks(log_rate, logits, 3.0) > risk).all()
    tiny = ne.code_risks(log_rate, logits, 1e-4)
    np.testing.assert_allclose(
        tiny.numpy(), np.array([[1.0, 0.5, 0.5], [0.08, 0.01, 0.01]]) * 1e-4, rtol=1e-3
    )
    # A subset of codes keeps its share of the whole vocabulary's softmax (not renormalised).
    some = ne.code_risks(log_rate, logits, 1.0, np.array([1, 2]))
    np.testing.assert_allclose(some.numpy(), expected[:, 1:], rtol=1e-5)


def test_auroc_table_counts_incident_cases_among_the_eligible_only():
    rng = np.random.default_rng(0)
    n = 200
    risks = rng.random((n, 3))
    events = np.zeros((n, 3), bool)
    events[:, 0] = risks[:, 0] > 0.7  # code A: perfectly ranked
    events[:, 1] = risks[:, 1] < 0.3  # code B: ranked backwards
    events[:5, 2] = True  # code C: 5 cases, too few
    eligible = np.ones((n, 3), bool)
    # Subjects who had A before: excluded, although their scores would spoil A's ranking.
    spoil = np.flatnonzero(risks[:, 0] < 0.2)[:10]
    events[spoil, 0] = True
    eligible[spoil, 0] = False
    table = ne.auroc_table(risks, eligible, events, ["A", "B", "C"], min_cases=20, n_boot=50)
    by_code = {r["code"]: r for r in table}
    assert set(by_code) == {"A", "B"}
    assert by_code["A"]["auroc"] == pytest.approx(1.0) and by_code["B"]["auroc"] == pytest.approx(0.0)
    assert by_code["A"]["eligible"] == n - len(spoil) and by_code["A"]["cases"] == int(
        events[eligible[:, 0], 0].sum()
    )
    assert [r["code"] for r in table] == ["A", "B"]  # highest AUROC first
    # With the spoilers counted the ranking is no longer perfect: eligibility matters.
    everyone = ne.auroc_table(risks, np.ones((n, 3), bool), events, ["A", "B", "C"], 20)
    assert {r["code"]: r for r in everyone}["A"]["auroc"] < 0.99
    # A CI around an ordinary code's AUROC.
    events[:, 2] = rng.random(n) < risks[:, 2] * 0.5
    (row,) = [
        r for r in ne.auroc_table(risks, eligible, events, ["A", "B", "C"], 20, 200) if r["code"] == "C"
    ]
    assert row["ci_low"] < row["auroc"] < row["ci_high"] and 0.5 < row["auroc"] < 1


def test_cohort_incident_excludes_prior_codes_and_respects_the_horizon():
    cohort = ne.Cohort(
        np.arange(4),
        np.zeros(4, np.int64),
        {},
        np.zeros(4),
        np.full(4, 365.25 * 50),
        {"X": (np.array([1, 2, 3]), np.array([10.0, 400.0, 20.0]))},
        {"X": np.array([3])},
    )
    eligible, event = cohort.incident("X", 365)
    assert eligible.tolist() == [True, True, True, False]
    assert event.tolist() == [False, True, False, True]  # subject 2's first X is past the horizon


def test_append_event_keeps_static_events_and_drops_the_oldest_timed_one():
    nan = float("nan")
    batch = {
        "codes": torch.tensor([[5, 6, 7], [5, 6, 0]]),
        "bins": torch.tensor([[0, 2, 3], [0, 1, 0]]),
        "age": torch.tensor([[nan, 100.0, 110.0], [nan, 50.0, nan]]),
        "delta": torch.tensor([[nan, 0.0, 10.0], [nan, 0.0, nan]]),
    }
    out = sim.append_event(
        batch,
        torch.tensor([1, 1]),
        torch.tensor([9, 8]),
        torch.tensor([120.0, 60.0]),
        torch.tensor([10.0, 10.0]),
    )
    assert out["codes"].tolist() == [[5, 7, 9], [5, 6, 8]]  # row 0 full: its oldest timed event goes
    assert out["bins"].tolist() == [[0, 3, 0], [0, 1, 0]]  # a generated event has no value bin
    assert out["age"][0, 1:].tolist() == [110.0, 120.0] and out["age"][1, 2] == 60.0


def test_foreseen_share_and_the_marginal_incidence_reference():
    year = ne.DAYS_PER_YEAR
    eligible = np.array([[True, True], [True, False], [True, True]])
    observed = np.array([[100.0, np.inf], [500.0, 50.0], [np.inf, 200.0]])  # first event, days after t
    # Two trajectories each: subject 0 foresees code 0 in year 1 once; subject 1 code 0 in year 2 twice.
    simulated = np.array(
        [
            [[50.0, np.inf], [np.inf, np.inf]],
            [[400.0, 10.0], [600.0, np.inf]],
            [[np.inf, np.inf], [np.inf, 20.0]],
        ]
    )

    def hit(k):
        return ((simulated > (k - 1) * year) & (simulated <= k * year)).mean(1)

    share = sim.foreseen_share(eligible, observed, hit, 2)
    # Year 1: subject 0 code 0 (foreseen by 1 of 2), subject 2 code 1 (1 of 2); subject 1's code 1
    # was there before t. Year 2: subject 1 code 0 (2 of 2).
    assert [s["diagnoses"] for s in share] == [2, 1]
    assert share[0]["share"] == pytest.approx(0.5) and share[1]["share"] == pytest.approx(1.0)
    band = np.array([0, 0, 1])
    table = sim.marginal_incidence(eligible, observed, band, 2, 2)
    assert table[0, 0].tolist() == [0.5, 0.0] and table[0, 1].tolist() == [0.5, 0.0]
    assert table[1, 0].tolist() == [0.0, 1.0]
    cells = sim.incidence_cells(eligible, observed, simulated, band, 2, ["a", "b"], ["young", "old"], 1)
    points = sim.incidence_points(cells)
    by = {(p["code"], p["age_band"]): p for p in points}
    assert by[("a", "young")]["observed"] == 1.0 and by[("a", "young")]["simulated"] == pytest.approx(0.75)
    assert ("b", "young") not in by  # no case, observed or simulated
    assert by[("b", "old")]["observed"] == 1.0 and by[("b", "old")]["simulated"] == 0.5


def test_pooled_incidence_bins_cells_by_simulated_incidence_weighted_by_eligible():
    cells = [  # two rare cells with no observed case, two common ones
        {"simulated": 0.01, "cases": 0, "eligible": 100},
        {"simulated": 0.02, "cases": 0, "eligible": 100},
        {"simulated": 0.30, "cases": 60, "eligible": 300},
        {"simulated": 0.50, "cases": 60, "eligible": 100},
    ]
    pooled = sim.pooled_incidence(cells, n_bins=2)
    # The cells' middles in cumulative eligible share: 1/12, 3/12, 7/12, 11/12.
    assert [b["cells"] for b in pooled] == [2, 2] and [b["eligible"] for b in pooled] == [200, 400]
    assert pooled[0]["simulated"] == pytest.approx(0.015) and pooled[0]["observed"] == 0.0
    assert pooled[1]["simulated"] == pytest.approx((90 + 50) / 400)
    assert pooled[1]["observed"] == pytest.approx((60 + 60) / 400)
    assert sim.pooled_incidence([]) == []
    # A bin of a few cases shows no observed incidence at min_cell; a cell of few cases still counts.
    cells[1]["cases"] = 3
    assert [b["observed"] for b in sim.pooled_incidence(cells, n_bins=2, min_cell=5)] == [None, 0.3]
    assert sim.pooled_incidence(cells, n_bins=1, min_cell=5)[0]["observed"] == pytest.approx(123 / 600)


def test_history_is_the_tail_of_what_pretraining_saw(tiny_cohort, tmp_path):
    """The evaluation's window of each held-out subject is the end of that subject's timeline in
    the pretraining store (same tokens, bins, ages and gaps), all before its prediction time."""
    from medweave.data.ehr import pretrain as store
    from medweave.data.ehr.events import NO_TIME

    folders = store.build_store(tiny_cohort, tmp_path / "pt", "cut")
    vocab = store.fit_vocab(folders, 2, 4)
    ids, times = ne.choose_subjects(tiny_cohort, "held_out", None, 0, 0)
    got_ids, window = ne.last_windows(ne.build_history(tiny_cohort, tmp_path / "ev", ids, times), vocab, 12)
    whole = store.TokenStore(folders, vocab, 10**6)  # one window per subject: the whole timeline
    assert len(got_ids) > 5
    for i, sid in enumerate(got_ids):
        (at,) = np.flatnonzero(whole.samples[:, 3] == sid)
        full = whole.batch(whole.samples[[at]])
        n = int((window["codes"][i] != 0).sum())
        n_static = int(((window["time"][i] == NO_TIME) & (window["codes"][i] != 0)).sum())
        total = int((full["codes"][0] != 0).sum())
        for key in ("codes", "bins", "age", "delta", "time"):
            np.testing.assert_array_equal(window[key][i, :n_static], full[key][0, :n_static])
            np.testing.assert_array_equal(
                window[key][i, n_static:n], full[key][0, total - (n - n_static) : total]
            )
        assert (window["time"][i, n_static:n] < times[np.searchsorted(ids, sid)]).all()


def test_the_index_event_follows_each_rows_last_event_at_the_prediction_time():
    """evaluation.next_event.query: one column more, the code after each row's last event (a full
    row keeps all of its own), its time the prediction time, its delta the days since the last
    timed event (0 without one), its age the subject's at the prediction time."""
    from medweave.data.ehr.events import NO_TIME

    day = 86_400_000_000
    inputs = {
        "codes": np.array([[5, 6, 0], [7, 8, 9], [5, 0, 0]]),
        "bins": np.zeros((3, 3), np.int64),
        "age": np.array([[np.nan, 100, np.nan], [np.nan, 50, 60], [np.nan, np.nan, np.nan]], np.float32),
        "delta": np.zeros((3, 3), np.float32),
        "time": np.array([[NO_TIME, 10 * day, NO_TIME], [NO_TIME, 20 * day, 30 * day], [NO_TIME] * 3]),
    }
    times = np.array([14, 33, 40]) * day
    last = np.array([10 * day, 30 * day, NO_TIME])
    out = ne.with_index_event(inputs, 4, times, last, np.array([104.0, 63.0, np.nan]))
    assert out["codes"].tolist() == [[5, 6, 4, 0], [7, 8, 9, 4], [5, 4, 0, 0]]
    assert out["time"][[0, 1, 2], [2, 3, 1]].tolist() == times.tolist()
    assert out["delta"][[0, 1, 2], [2, 3, 1]].tolist() == [4, 3, 0]
    assert out["age"][0, 2] == 104 and out["age"][1, 3] == 63 and np.isnan(out["age"][2, 1])
    held = inputs["codes"] != 0  # every event a row had stays where it was
    for key in inputs:
        np.testing.assert_array_equal(out[key][:, :3][held], inputs[key][held])


def test_an_evaluated_subject_whose_future_was_pretrained_on_is_refused():
    from medweave.errors import MedweaveError
    from medweave.evaluation.next_event_report import check_leakage

    extras = {"evaluation_cutoffs": {"subject_ids": np.array([1, 2]), "cutoff": np.array([100, 200])}}
    check_leakage("ckpt", extras, np.array([1, 2]), np.array([100, 250]))  # cut at or before t: fine
    with pytest.raises(MedweaveError, match="1 of the 2 evaluated subjects"):
        check_leakage("ckpt", extras, np.array([1, 2]), np.array([50, 250]))  # subject 1 seen up to 100
    with pytest.raises(MedweaveError, match="1 of the 1"):
        check_leakage("ckpt", extras, np.array([3]), np.array([50]))  # a whole history pretrained on


def test_cached_window_gives_the_full_causal_forward():
    """Tokens appended through the key-value cache get the hidden state the whole-window forward
    gives them, also after right padding and with a row dropped."""
    from medweave.models.pretrain.backbone import EventTransformer

    torch.manual_seed(0)
    backbone = EventTransformer(vocab_size=20, n_bins=3, dim=16, n_layers=2, n_heads=2, dropout=0.0).eval()
    nan = float("nan")
    batch = {
        "codes": torch.tensor([[4, 5, 6, 7], [4, 8, 0, 0], [9, 5, 6, 0]]),
        "bins": torch.tensor([[0, 1, 2, 0], [0, 3, 0, 0], [0, 0, 1, 0]]),
        "age": torch.tensor([[nan, 9e3, 9.1e3, 9.2e3], [nan, 2e4, nan, nan], [nan, 3e3, 3.5e3, nan]]),
        "delta": torch.tensor([[nan, 0.0, 100.0, 100.0], [nan, 0.0, nan, nan], [nan, 0.0, 500.0, nan]]),
    }

    def full_last(b):
        return ne.last_hidden(ne.NextEventModel(backbone, None, {}, 8, {}), b)

    with torch.no_grad():
        cache = sim.CachedWindow(backbone, batch)
        torch.testing.assert_close(cache.hidden, full_last(batch), atol=1e-5, rtol=1e-4)
        rows = torch.tensor([0, 2])  # row 1 has finished
        code, age, delta = torch.tensor([11, 12]), torch.tensor([9.3e3, 3.6e3]), torch.tensor([100.0, 100.0])
        got = cache.append(rows, code, age, delta)
        longer = sim.append_event(
            {
                k: torch.cat(
                    [
                        v,
                        torch.zeros_like(v[:, :1])
                        if k in ("codes", "bins")
                        else torch.full_like(v[:, :1], nan),
                    ],
                    1,
                )[rows]
                for k, v in batch.items()
            },
            torch.tensor([1, 1]),
            code,
            age,
            delta,
        )
        torch.testing.assert_close(got, full_last(longer), atol=1e-5, rtol=1e-4)
        again = cache.append(
            torch.tensor([1]), torch.tensor([13]), torch.tensor([3.7e3]), torch.tensor([100.0])
        )
        last = sim.append_event(
            {k: torch.cat([v[1:], v[1:, :1] * 0], 1) for k, v in longer.items()},
            torch.tensor([1]),
            torch.tensor([13]),
            torch.tensor([3.7e3]),
            torch.tensor([100.0]),
        )
        torch.testing.assert_close(again, full_last(last), atol=1e-5, rtol=1e-4)
    trimmed = sim.trim(batch, torch.tensor([1, 1, 1]), 3)
    assert trimmed["codes"].tolist() == [[4, 6, 7], [4, 8, 0], [9, 5, 6]]


def test_small_cells_stay_out_of_the_tables():
    """Disclosure control: no per-code row, incidence point or label check shows 1-19 people."""
    rng = np.random.default_rng(1)
    n = 300
    risks = rng.random((n, 2))
    events = np.zeros((n, 2), bool)
    events[:25, 0] = True  # 25 cases, 275 non-cases: shown
    events[:, 1] = True
    events[:290, 1] = False  # 10 cases: hidden at min_cell 20, though min_cases is 5
    eligible = np.ones((n, 2), bool)
    table = ne.auroc_table(risks, eligible, events, ["A", "B"], min_cases=5, min_cell=20)
    assert [r["code"] for r in table] == ["A"]
    assert {r["code"] for r in ne.auroc_table(risks, eligible, events, ["A", "B"], min_cases=5)} == {"A", "B"}
    observed = np.where(events, 100.0, np.inf)
    simulated = np.full((n, 2, 2), 100.0)
    band = np.zeros(n, int)
    cells = sim.incidence_cells(eligible, observed, simulated, band, 1, ["A", "B"], ["all"], 20)
    points = sim.incidence_points(cells, 20)
    assert [p["code"] for p in points] == ["A"] and "cases" not in points[0]
    # The pooled curve counts B's 10 cases with A's 25: 35 of 600 eligible, no small cell shown.
    assert sim.pooled_incidence(cells, n_bins=1, min_cell=20)[0]["observed"] == pytest.approx(35 / 600)
