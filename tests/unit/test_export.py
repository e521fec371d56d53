"""Output control rules on hand-made aggregates: small cells merged or suppressed (and what the
totals would give away), figures pooled exactly, IDs, dates and paths found."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.export import disclosure as D
from medweave.export import scan
from medweave.export.gather import SCRUBBED, scrub_config


def metrics(value=0.7):
    return {"auroc": {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}}


def cell(n, events, **extra):
    return {"n": n, "events": events, "metrics": metrics(), **extra}


def summary(groups, n=100, events=40):
    return {"task_kind": "binary", "n": n, "events": events, "overall": metrics(), "groups": groups}


def test_small_age_bands_merge_with_their_smaller_neighbour_and_keep_counts_only():
    bands = {
        "<18": cell(3, 1),
        "18-39": cell(30, 12),
        "40-59": cell(40, 16),
        "60-74": cell(24, 9),
        "75+": cell(3, 2),
    }
    out = D.control_summary(summary({"age_band": bands}), 5)
    got = out.summary["groups"]["age_band"]
    assert list(got) == ["<40", "40-59", "60+"]
    assert got["<40"]["n"] == 33 and got["<40"]["events"] == 13 and "metrics" not in got["<40"]
    assert got["60+"]["merged_from"] == ["60-74", "75+"] and got["60+"]["n"] == 27
    assert got["40-59"] == bands["40-59"]  # untouched, metrics and all
    assert sum(g["n"] for g in got.values()) == 100
    assert any("merged into <40" in c for c in out.changes)


def test_a_small_unordered_cell_is_suppressed_and_so_is_the_next_smallest():
    """female + male + unknown = 100: hiding only "unknown" (n=3) would leave it as 100 - 97."""
    groups = {"sex": {"female": cell(52, 20), "male": cell(45, 20), "unknown": cell(3, 0)}}
    out = D.control_summary(summary(groups), 5)
    sex = out.summary["groups"]["sex"]
    assert sex["unknown"]["n"] == "<5" and "metrics" not in sex["unknown"]
    assert sex["male"]["n"] == "suppressed" and sex["male"]["events"] is None  # secondary
    assert sex["female"]["n"] == 52 and "metrics" in sex["female"]
    assert any("secondary" in c for c in out.changes)


def test_a_cell_with_few_events_hides_its_events_and_metrics_and_one_more_by_difference():
    groups = {"modalities": {"a": cell(40, 3), "b": cell(30, 20), "c": cell(30, 17)}}
    out = D.control_summary(summary(groups), 5)
    got = out.summary["groups"]["modalities"]
    assert got["a"]["n"] == 40 and got["a"]["events"] == "suppressed" and "metrics" not in got["a"]
    hidden_events = [k for k, v in got.items() if v["events"] == "suppressed"]
    assert len(hidden_events) == 2  # 40 - (20 + 17) would give a's 3 events away otherwise
    shown = [v["events"] for v in got.values() if isinstance(v["events"], int)]
    assert 40 - sum(shown) >= 5


def test_cells_already_hidden_by_the_evaluation_are_protected_from_the_total():
    groups = {"sex": {"female": cell(60, 20), "male": cell(38, 19), "unknown": {"n": "<20", "events": None}}}
    got = D.control_summary(summary(groups), 5).summary["groups"]["sex"]
    assert got["male"]["n"] == "suppressed"  # 100 - 60 - 38 = 2 would be the unknown cell
    assert got["unknown"]["n"] == "<20"  # as the evaluation said: not "<5", which it may not be


def test_a_split_too_small_is_refused_whole():
    assert D.control_summary(summary({}, n=40, events=3), 5).refused
    assert not D.control_summary(summary({}, n=40, events=5), 5).refused


def test_evaluation_times_are_rounded():
    s = summary({}) | {"evaluation_times_days": [101.3, 377.9]}
    assert D.control_summary(s, 5).summary["evaluation_times_days"] == [90, 390]


def test_calibration_bins_pool_exactly():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=23)
    y = (rng.uniform(size=23) < p).astype(float)
    from medweave.evaluation.report import calibration_bins

    bins = calibration_bins(y, p)
    assert min(b["n"] for b in bins) < 5
    pooled = D.merge_calibration_bins(bins, 5)
    assert min(b["n"] for b in pooled) >= 5 and sum(b["n"] for b in pooled) == 23
    # a pooled bin is the mean over its persons
    edges = np.cumsum([0] + [b["n"] for b in pooled])
    order = np.argsort(p, kind="stable")
    for b, lo, hi in zip(pooled, edges, edges[1:], strict=False):
        assert b["predicted"] == pytest.approx(p[order[lo:hi]].mean())
        assert b["observed"] == pytest.approx(y[order[lo:hi]].mean())


def test_kaplan_meier_steps_pool_events_and_stop_where_few_are_at_risk():
    from medweave.evaluation.report import kaplan_meier_curves
    from medweave.evaluation.summary import Predictions

    rng = np.random.default_rng(1)
    n = 90
    time = rng.exponential(400, n).round(0) + 1
    event = rng.uniform(size=n) < 0.7
    preds = Predictions(rng.normal(size=n), event.astype(float), time=time)
    curves = kaplan_meier_curves(preds)
    assert sum(c["n"] for c in curves) == n
    raw = curves[0]
    assert min(raw["events"]) == 1 and min(raw["at_risk"]) < 5  # steps at single events, a thin tail
    coarse = D.coarsen_kaplan_meier(raw, 5)
    assert min(coarse["events"]) >= 5
    assert all(t % D.KM_TIME_UNIT_DAYS == 0 for t in coarse["time"])
    # each shown S(t) is the exact estimate at the last event pooled into that step
    last = {t: s for t, a, s in zip(raw["time"], raw["at_risk"], raw["survival"], strict=True) if a >= 5}
    assert set(coarse["survival"]) <= {round(s, 4) for s in last.values()}
    cut = max(t for t, a in zip(raw["time"], raw["at_risk"], strict=True) if a >= 5)
    assert max(coarse["time"]) < cut + D.KM_TIME_UNIT_DAYS
    tiny = {**raw, "time": raw["time"][:4], "events": [1] * 4, "at_risk": [4, 3, 2, 1], "survival": [0.9] * 4}
    assert D.coarsen_kaplan_meier(tiny, 5) is None


@pytest.mark.parametrize(
    "text, found",
    [
        ('"birth_date": "1917-03-14"', "a birth date"),
        ("seen 2021-06-01T08:30:00", "a date"),
        ("<td>14.03.1917</td>", "a date"),
        ("cpr 140317-1234", "a CPR-like personal number"),
        ("subject 1234567890 had", "a subject ID of the cohort"),
    ],
)
def test_text_checks_find_dates_personal_numbers_and_cohort_ids(text, found):
    cohort = scan.Cohort(ids={"1234567890"}, sizes={10})
    problems = scan.text_problems(text, cohort)
    assert problems and problems[0].startswith(found)
    assert "1917" not in " ".join(problems) and "1234567890" not in " ".join(problems)  # never the value


def test_text_checks_pass_aggregates():
    text = (
        '{"auroc": {"value": 0.7134, "ci_low": 0.61}, "n": 1234, "run": "logs/2026x", "code": "ICD10//I21"}'
    )
    assert scan.text_problems(text, scan.Cohort(ids={"1234567890"}, sizes={24})) == []


def test_json_keys_and_lists_that_look_like_subjects():
    cohort = scan.Cohort(sizes={3})
    rows = {"rows": [{"score": 0.1}, {"score": 0.2}, {"score": 0.3}], "meta": {"patient_id": 1}}
    problems = scan.json_problems(rows, cohort)
    assert any("one record per subject" in p for p in problems)
    assert any("'meta.patient_id' names a subject identifier" in p for p in problems)


def test_id_names():
    for name in ("subject_id", "Patient ID", "person-id", "CPR", "pnr", "mrn", "subject"):
        assert scan.is_id_name(name), name
    for name in ("auroc", "subjects", "n", "epoch", "val/auroc"):
        assert not scan.is_id_name(name), name


def test_config_paths_uris_and_users_are_scrubbed():
    config = {
        "data": {"root": "/secure/cohorts/cvd", "batch_size": 16, "modalities": ["ehr_codes"]},
        "paths": {"log_dir": "logs"},
        "tracking_uri": "postgresql://alice:pw@db/mlflow",
        "ckpt_path": "runs/a/last.ckpt",
        "evaluation": {"sex_codes": {"female": ["SEX//F"]}},
        "model": {"_target_": "medweave.models.module.MultimodalModule"},
        "callbacks": {"model_checkpoint": {"monitor": "val/auroc"}},
    }
    out, count = scrub_config(config)
    assert (
        out["data"]["root"] == out["tracking_uri"] == out["ckpt_path"] == out["paths"]["log_dir"] == SCRUBBED
    )
    assert count == 4
    assert out["data"]["batch_size"] == 16 and out["evaluation"]["sex_codes"]["female"] == ["SEX//F"]
    assert out["model"]["_target_"].startswith("medweave.")
    assert out["callbacks"]["model_checkpoint"]["monitor"] == "val/auroc"  # a metric, not a path
