"""Few-shot draws (medweave.fewshot.draws): exactly k of each class, seeded, shared, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.errors import MedweaveError
from medweave.fewshot.draws import ALL, make_draws


def _cohort(n=400, prevalence=0.2, seed=1):
    rng = np.random.default_rng(seed)
    target = (rng.random(n) < prevalence).astype(np.float32)
    split = rng.integers(0, 3, n)  # 0 train, 1 tuning, 2 held_out
    return target, np.flatnonzero(split == 0), np.flatnonzero(split == 1)


def test_each_draw_has_k_of_each_class_from_its_own_split():
    target, train, tuning = _cohort()
    draws = make_draws(target, train, tuning, [1, 4, 16], n_draws=3, seed=0)
    assert [(d.k, d.draw) for d in draws] == [(k, d) for d in range(3) for k in (1, 4, 16)]
    for d in draws:
        for rows, split in ((d.train, train), (d.tuning, tuning)):
            assert np.isin(rows, split).all() and len(np.unique(rows)) == len(rows)
            assert (target[rows] > 0).sum() == d.k and (target[rows] == 0).sum() == d.k
    # Draws of one k differ from each other.
    assert len({tuple(d.train) for d in draws if d.k == 16}) == 3


def test_the_same_seed_gives_the_same_draws_and_adding_a_k_changes_no_other():
    target, train, tuning = _cohort()
    a = make_draws(target, train, tuning, [2, 8], n_draws=2, seed=5)
    b = make_draws(target, train, tuning, [2, 4, 8, ALL], n_draws=2, seed=5)
    other = make_draws(target, train, tuning, [2, 8], n_draws=2, seed=6)
    same = {(d.k, d.draw): d for d in b}
    for d in a:
        assert np.array_equal(d.train, same[d.k, d.draw].train)
        assert np.array_equal(d.tuning, same[d.k, d.draw].tuning)
    assert not all(np.array_equal(x.train, y.train) for x, y in zip(a, other, strict=True))
    (everything,) = [d for d in b if d.k == ALL]
    assert np.array_equal(everything.train, np.sort(train)) and np.array_equal(
        everything.tuning, np.sort(tuning)
    )


def test_a_k_larger_than_train_has_names_both_numbers():
    target, train, tuning = _cohort()
    positives = int((target[train] > 0).sum())
    with pytest.raises(MedweaveError) as err:
        make_draws(target, train, tuning, [1, positives + 1], n_draws=1, seed=0)
    assert f"k={positives + 1}" in str(err.value) and f"{positives} positive" in str(err.value)
    with pytest.raises(MedweaveError, match="not a positive integer"):
        make_draws(target, train, tuning, [0], n_draws=1, seed=0)


def test_a_short_tuning_split_gives_what_it_has():
    target, train, tuning = _cohort()
    tuning = tuning[:30]  # a few positives only
    tuning_pos = int((target[tuning] > 0).sum())
    k = tuning_pos + 3
    assert k <= (target[train] > 0).sum()
    (d,) = make_draws(target, train, tuning, [k], n_draws=1, seed=0)
    assert (target[d.tuning] > 0).sum() == tuning_pos and (target[d.tuning] == 0).sum() == k


def test_offset_logistic_is_sklearns_without_an_offset_and_keeps_it_under_a_strong_penalty():
    from sklearn.linear_model import LogisticRegression

    from medweave.embeddings.probe import OffsetLogistic, fit_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] + rng.normal(size=300) > 0).astype(int)
    ours = OffsetLogistic(0.5).fit(x, y, np.zeros(300))
    theirs = LogisticRegression(C=0.5, max_iter=2000).fit(x, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_[0], atol=1e-3)  # both stop at a tolerance
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_[0], atol=1e-3)

    offset = 3.0 * x[:, 1]  # the prior knows another feature
    weak = OffsetLogistic(1e-6).fit(x, y, offset)
    assert np.abs(weak.coef_).max() < 1e-3  # nothing learnt: the ranking is the offset's
    assert np.array_equal(np.argsort(weak.decision_function(x, offset)), np.argsort(offset))
    predict, chosen = fit_probe(x[:200], y[:200], x[200:], y[200:], offsets=(offset[:200], offset[200:]))
    assert predict(x[200:], offset[200:]).shape == (100,) and chosen["C"] > 0
