"""Comorbidity trajectories of the registry sandbox (comorbidity.py): onsets by inverse cumulative
hazard, hazard ratios recoverable from the written history, what the EHR shows and the oracle knows."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from medweave.sandbox import comorbidity, ehr
from medweave.sandbox.generate import SandboxConfig, generate_cohort
from medweave.sandbox.latent import sigmoid

COLUMN = {row[0]: j for j, row in enumerate(comorbidity.TRAJECTORIES)}
ROW = {row[0]: row for row in comorbidity.TRAJECTORIES}


@pytest.fixture(scope="module")
def ages():
    """400,000 people with m = 0: onset ages of every condition (a second)."""
    return comorbidity.draw_onset_ages(np.random.default_rng(0), np.zeros(400_000))


def test_onsets_follow_the_baseline_hazard_the_parents_and_age(ages):
    e66, e11 = ages[:, COLUMN["ICD10//E66"]], ages[:, COLUMN["ICD10//E11"]]
    assert abs((e66 < 70).mean() - ROW["ICD10//E66"][1]) < 0.005  # a root: by_70 at m = 0
    # E11's draw is independent of E66's: without E66 before 70 its hazard is the baseline's
    assert abs((e11[e66 >= 70] < 70).mean() - ROW["ICD10//E11"][1]) < 0.005
    # from 50 to 60, with E66 from before 30 or without it by 60: the cumulative hazards differ by the HR
    alive = e11 >= 50

    def hazard(group):
        return -np.log((e11[group & alive] >= 60).mean())

    ratio = hazard(e66 < 30) / hazard(e66 >= 60)
    assert abs(ratio / ROW["ICD10//E11"][4]["ICD10//E66"] - 1) < 0.1
    # ageing: a root's yearly hazard grows by exp(g) a year, so by exp(20 g) from 40 to 60
    e78, g = ages[:, COLUMN["ICD10//E78"]], ROW["ICD10//E78"][3]
    yearly = [((e78 >= a) & (e78 < a + 1)).sum() / (e78 >= a).sum() for a in (40, 60)]
    assert abs(yearly[1] / yearly[0] / np.exp(20 * g) - 1) < 0.1


@pytest.fixture(scope="module")
def comorbid_cohort(tmp_path_factory):
    """400 people, 100 history events each on average, comorbidity on (the registry default)."""
    cfg = SandboxConfig(n_subjects=400, n_variants=50, registry_history=True, events_per_person=100, seed=5)
    assert cfg.comorbidity
    return cfg, generate_cohort(tmp_path_factory.mktemp("comorbid") / "r", cfg)


def test_the_record_shows_each_diagnosed_condition_and_the_risk_weighs_them(comorbid_cohort):
    cfg, root = comorbid_cohort
    ev = pl.read_parquet(root / "data" / "*.parquet")
    truth = pl.read_parquet(root / "ground_truth/risk.parquet").sort("subject_id")
    t0 = ev.filter(pl.col("code") == ehr.INDEX).select("subject_id", t0="time")
    before = ev.join(t0, on="subject_id").filter(pl.col("time") < pl.col("t0"))
    for code, *_ in comorbidity.TRAJECTORIES:  # diagnosed_<code> is exactly "a code before t0"
        shown = set(before.filter(pl.col("code") == code)["subject_id"])
        flag = truth[comorbidity.factor(code)].to_numpy() == 1
        assert set(truth["subject_id"].to_numpy()[flag]) == shown and len(shown) > 2, code
    cvd = cfg.diseases["cvd"]
    x = {f: truth[f].to_numpy() for f in truth.columns if f in cvd.weights or f.startswith("diagnosed_")}
    x |= {"genetic_cvd": truth["genetic_cvd"].to_numpy(), "age": (truth["age_years"].to_numpy() - 60) / 10}
    liability = cvd.intercept + sum(w * x[f] for f, w in cvd.weights.items())
    extra = sum(w * x[f] for f, w in comorbidity.outcome_weights(cvd.code).items())
    np.testing.assert_allclose(truth["risk_cvd"].to_numpy(), sigmoid(liability + extra), rtol=1e-9)
    oracle = json.loads((root / "metadata/dataset.json").read_text())["medweave"]["oracle"]
    for task in ("cvd_onset_1y", "t1d_onset_1y"):  # the EHR-only ceiling stays below the true risk's
        assert oracle[task]["auroc_by_modality"]["ehr_codes"]["train"] < oracle[task]["auroc"]["train"]


def test_hba1c_and_creatinine_rise_after_their_condition(comorbid_cohort):
    _, root = comorbid_cohort
    ev = pl.read_parquet(root / "data" / "*.parquet")
    for condition, lab, jump, *_ in comorbidity.LAB_DRIFT:
        onset = ev.filter(pl.col("code") == condition).group_by("subject_id").agg(onset=pl.col("time").min())
        values = ev.filter(pl.col("code") == lab).join(onset, on="subject_id")
        after = values.filter(pl.col("time") > pl.col("onset") + pl.duration(days=365))["numeric_value"]
        earlier = values.filter(pl.col("time") < pl.col("onset"))["numeric_value"]
        assert after.mean() - earlier.mean() > jump, (condition, lab)


@pytest.mark.slow  # two 5,000-person cohorts, eight Poisson regressions each: 37-61 s at load 11-17
def test_hazard_ratios_set_are_recovered_from_the_written_history_and_absent_without(tmp_path):
    """The structure a pretrained model can learn: in 5,000 people the incidence of a child
    condition after its parent's first code, adjusted for age and m, is the hazard ratio set;
    with comorbidity=false there is none (the sparse codes of this cohort, 10 a person, time the
    onsets there only roughly: its estimates fall below 1, never near the ratio set)."""
    settings = dict(n_subjects=5000, n_variants=20, registry_history=True, events_per_person=10, seed=1)
    on = comorbidity.hazard_ratios(generate_cohort(tmp_path / "on", SandboxConfig(**settings)))
    off_root = generate_cohort(tmp_path / "off", SandboxConfig(**settings, comorbidity=False))
    off = comorbidity.hazard_ratios(off_root)
    for edge in (("ICD10//E66", "ICD10//I10"), ("ICD10//E66", "ICD10//E11")):  # the most cases
        assert on[edge]["cases"] > 300 and 0.75 < on[edge]["recovered"] / on[edge]["set"] < 1.33, on[edge]
        assert off[edge]["set"] == 1.0 and off[edge]["recovered"] < 1.3, off[edge]
    ratios = np.array([v["recovered"] / v["set"] for v in on.values()])
    assert np.exp(np.abs(np.log(ratios)).mean()) < 1.35  # every edge, on average within a third
