"""The audit's maths on synthetic arrays, and canary planting (src/medweave/audit/)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from medweave.audit import attacks as A
from medweave.audit.canaries import exposure, plan_canaries
from medweave.errors import MedweaveError


def members_and_losses(gap: float, n: int = 500, seed: int = 0):
    """Member losses drawn lower by ``gap`` standard deviations than non-members'."""
    rng = np.random.default_rng(seed)
    member = np.arange(2 * n) < n
    loss = np.abs(rng.normal(1.0, 0.3, 2 * n) - gap * 0.3 * member)
    return member, loss


def test_separable_losses_give_auroc_one_and_full_tpr():
    member = np.array([True] * 50 + [False] * 50)
    loss = np.where(member, 0.01, 1.0) + np.linspace(0, 0.001, 100)
    figures = A.attack_figures(member, A.loss_attack(loss), [0.01, 0.001], n_boot=50, seed=0)
    assert figures["auroc"]["value"] == 1.0
    assert figures["tpr_at_fpr_1pct"]["value"] == 1.0 and figures["tpr_at_fpr_0.1pct"]["value"] == 1.0


def test_identical_distributions_give_chance_and_a_ci_around_half():
    member, loss = members_and_losses(gap=0.0)
    figures = A.attack_figures(member, A.loss_attack(loss), [0.01], n_boot=200, seed=0)
    auc = figures["auroc"]
    assert abs(auc["value"] - 0.5) < 0.05 and auc["ci_low"] < 0.5 < auc["ci_high"]
    assert figures["tpr_at_fpr_1pct"]["value"] < 0.05  # near the FPR itself


def test_a_leaking_model_is_seen_with_a_ci_above_half():
    member, loss = members_and_losses(gap=1.0)
    auc = A.attack_figures(member, A.loss_attack(loss), [0.01], n_boot=200, seed=0)["auroc"]
    assert auc["ci_low"] > 0.6


def test_tpr_at_fpr_counts_the_allowed_false_positives():
    member = np.array([False] * 100 + [True] * 4)
    score = np.concatenate([np.arange(100.0), [99.5, 98.5, 30.0, 200.0]])
    # 1 % of 100 non-members: one false positive allowed, threshold above the 2nd highest (98).
    assert A.tpr_at_fpr(member, score, 0.01) == 0.75
    assert A.tpr_at_fpr(member, score, 0.001) == 0.5  # none allowed: above 99
    assert A.tpr_at_fpr(member, score, 0.5) == 0.75  # 50 allowed: above 49


def test_binary_loss_is_bce_and_stable():
    logit = np.array([0.0, 2.0, -3.0, 800.0, -800.0])
    target = np.array([1, 0, 0, 1, 1])
    loss = A.binary_loss(logit, target)
    assert np.isfinite(loss).all() and loss[3] == 0.0 and loss[4] == 800.0
    assert np.isclose(loss[0], np.log(2)) and np.isclose(loss[1], np.log1p(np.exp(2.0)))
    # phi, the logit of the true label's probability: the sign flips for label 0
    assert A.signed_logit_confidence(np.array([2.0]), np.array([0]))[0] == -2.0


def shadow_world(leak: float, k: int = 16, n: int = 400, seed: int = 0):
    """Subjects with their own difficulty; a model that trained on a subject adds ``leak`` to its phi."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 2, n)
    in_shadow = rng.random((k, n)) < 0.5
    phi_shadow = difficulty + leak * in_shadow + rng.normal(0, 0.3, (k, n))
    member = np.arange(n) < n // 2
    phi = difficulty + leak * member + rng.normal(0, 0.3, n)
    return member, phi, phi_shadow, in_shadow


def test_lira_sees_per_subject_leakage_the_loss_attack_cannot():
    """Subjects differ far more in difficulty than a membership shifts them: the raw loss hardly
    tells members apart, the calibrated likelihood ratio does."""
    member, phi, phi_shadow, in_shadow = shadow_world(leak=1.0)
    loss = np.logaddexp(0, -phi)
    loss_auc = A.attack_figures(member, A.loss_attack(loss), [0.01], 20, 0)["auroc"]["value"]
    online = A.attack_figures(member, A.lira_online(phi, phi_shadow, in_shadow), [0.01], 20, 0)
    offline = A.attack_figures(member, A.lira_offline(phi, phi_shadow, in_shadow), [0.01], 20, 0)
    assert loss_auc < 0.7
    assert online["auroc"]["value"] > 0.9 and offline["auroc"]["value"] > 0.85


def test_lira_on_a_model_that_does_not_leak_is_chance():
    member, phi, phi_shadow, in_shadow = shadow_world(leak=0.0)
    auc = A.attack_figures(member, A.lira_online(phi, phi_shadow, in_shadow), [0.01], 200, 0)["auroc"]
    assert auc["ci_low"] < 0.5 < auc["ci_high"]


def test_lira_needs_in_and_out_shadows():
    phi_shadow = np.zeros((1, 5))
    with pytest.raises(MedweaveError, match="at least 2"):
        A.lira_online(np.zeros(5), phi_shadow, np.ones((1, 5), bool))
    with pytest.raises(MedweaveError, match="equal"):
        A.lira_online(np.zeros(5), phi_shadow, np.ones((2, 5), bool))


def test_exposure_is_log2_candidates_minus_log2_rank():
    losses = np.array(
        [
            [0.1, 0.5, 0.6, 0.7],  # lowest of 4: rank 1, exposure 2 bits
            [0.9, 0.5, 0.6, 0.7],  # highest: rank 4, 0 bits
            [0.6, 0.5, 0.6, 0.7],  # one lower, one tie: rank 2.5
        ]
    )
    assert np.allclose(exposure(losses), [2.0, 0.0, 2 - np.log2(2.5)])
    rng = np.random.default_rng(0)
    chance = exposure(rng.random((2000, 64)))  # a canary no better than its candidates
    assert abs(chance.mean() - np.mean(6 - np.log2(np.arange(1, 65)))) < 0.1


def test_canaries_are_deterministic_and_use_vocabulary_codes(tiny_cohort):
    splits = pq.read_table(tiny_cohort / "metadata/subject_splits.parquet").to_pandas()
    train_ids = splits.subject_id[splits.split == "train"].to_numpy()
    args = dict(n=2, codes=6, candidates=5, copies=2, label=True, min_code_subjects=5, history_days=900)
    one = plan_canaries(tiny_cohort, "cvd_onset_1y", train_ids, seed=4, **args)
    two = plan_canaries(tiny_cohort, "cvd_onset_1y", train_ids, seed=4, **args)
    other = plan_canaries(tiny_cohort, "cvd_onset_1y", train_ids, seed=5, **args)
    assert one.candidate_events.equals(two.candidate_events) and one.planted_events.equals(two.planted_events)
    assert not one.candidate_events.equals(other.candidate_events)
    assert one.candidate_ids.shape == (4, 5) and list(one.is_planted) == [True, True, False, False]
    assert len(one.planted_ids) == 4 and one.planted_ids.min() > splits.subject_id.max()
    assert len(set(one.candidate_ids.ravel()) | set(one.planted_ids)) == 24  # fresh IDs, no reuse
    events = one.candidate_events.to_pandas()

    def record(sid):
        return events[events.subject_id == sid].code.tolist()

    first = one.candidate_ids[0]
    assert all(record(first[0])[-6:] != record(j)[-6:] for j in first[1:])  # other secrets
    planted = one.planted_events.to_pandas()
    assert planted[planted.subject_id == one.planted_ids[0]].code.tolist() == record(first[0])
    assert one.planted_labels.column("boolean_value").to_pylist() == [True] * 4
    with pytest.raises(MedweaveError, match="codes"):
        plan_canaries(tiny_cohort, "cvd_onset_1y", train_ids, seed=4, **(args | {"codes": 10_000}))


def load_tradeoff():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "privacy_tradeoff.py"
    spec = importlib.util.spec_from_file_location("privacy_tradeoff", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tradeoff_runs_dp_rows_only_where_the_privacy_group_exists(tmp_path, capsys):
    bench = load_tradeoff()
    (tmp_path / "train.yaml").write_text("defaults:\n  - _self_\n  - data: cohort\n")
    assert [label for label, _, _ in bench.settings([1, 4], tmp_path)] == ["no DP"]
    assert "DP rows skipped" in capsys.readouterr().err
    (tmp_path / "privacy").mkdir()
    (tmp_path / "privacy" / "dp.yaml").write_text("target_epsilon: 8\n")
    rows = bench.settings([1, 4], tmp_path)
    assert [r[0] for r in rows] == ["no DP", "DP, epsilon 1", "DP, epsilon 4"]
    assert rows[2][2] == ["+privacy=dp", "privacy.target_epsilon=4"]
    (tmp_path / "train.yaml").write_text("defaults:\n  - _self_\n  - privacy: null\n")
    assert bench.settings([16], tmp_path)[1][2] == ["privacy=dp", "privacy.target_epsilon=16"]


def test_tradeoff_table_has_a_row_per_setting():
    bench = load_tradeoff()
    ci = {"value": 0.6, "ci_low": 0.55, "ci_high": 0.65}
    report = {
        "attacks": {
            name: {"auroc": ci, "tpr_at_fpr_1pct": ci} for name in ("loss", "lira_online", "lira_offline")
        },
        "target": {"test_auroc": ci, "epsilon": None},
        "canaries": {"mean_exposure_planted": 3.2, "mean_exposure_control": 1.1, "ceiling_bits": 7.64},
        "setting": {"members": 150, "shadow_models": 4},
    }
    rows = [
        bench.row_of("no DP", None, report, 1.0),
        bench.row_of("DP, epsilon 4", 4.0, report | {"target": {"test_auroc": ci, "epsilon": 3.97}}, 2.0),
    ]
    lines = bench.table(rows).splitlines()
    assert len(lines) == 4 and "| no DP | ∞ | 0.600 (0.550-0.650)" in lines[2]
    assert lines[3].startswith("| DP, epsilon 4 | 3.97 |") and "3.20 / 1.10 (of 7.64)" in lines[3]


def test_audit_config_takes_every_train_override():
    from tests.conftest import compose

    cfg = compose("audit", ["experiment=quickstart", "data.root=/x", "audit.shadow_models=3"])
    assert cfg.task_name == "audit" and cfg.audit.shadow_models == 3 and cfg.audit.checkpoint == "best"
    assert cfg.model.fusion._target_.endswith("AttentionFusion") and cfg.trainer.max_epochs == 12


def test_canaries_need_the_task_label_file(tmp_path):
    with pytest.raises(MedweaveError, match="labels/"):
        plan_canaries(tmp_path, "cvd_onset_1y", np.array([1]), 1, 1, 2, 1, True, 1, 10, 0)


def test_chance_exposure_is_about_log2_e():
    rng = np.random.default_rng(1)
    assert abs(exposure(rng.random((4000, 200))).mean() - np.log2(np.e)) < 0.05
