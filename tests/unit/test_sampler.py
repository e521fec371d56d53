"""SubjectSampler: every subject on one rank, an order fixed by (seed, epoch), exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from medweave.data.sampler import SubjectSampler


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (11, 2), (2, 4)])
def test_evaluation_shards_hold_every_subject_once(n, world):
    shards = [list(SubjectSampler(n, world, rank, shuffle=False, pad=False)) for rank in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))
    assert [len(s) for s in shards] == [len(SubjectSampler(n, world, r, pad=False)) for r in range(world)]


@pytest.mark.parametrize("n,world", [(10, 3), (11, 2), (7, 7), (2, 5)])
def test_training_shards_are_equal_and_cover_every_subject(n, world):
    shards = [list(SubjectSampler(n, world, rank, seed=1)) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # same number of optimizer steps on every rank
    assert set(sum(shards, [])) == set(range(n))


def test_order_depends_on_seed_and_epoch_only():
    a, b = SubjectSampler(50, seed=3), SubjectSampler(50, seed=3)
    np.random.seed(123)  # the global RNG plays no part
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    assert sorted(a) == list(range(50))
    assert list(SubjectSampler(50, seed=4)) != list(b)


def test_resume_continues_the_epoch_where_it_stopped():
    full = SubjectSampler(40, 2, 1, seed=0)
    full.set_epoch(2)
    order = list(full)
    resumed = SubjectSampler(40, 2, 1, seed=0)
    resumed.resume(epoch=2, samples_done=8)
    resumed.set_epoch(2)  # Lightning sets the epoch again: the skip holds
    assert len(resumed) == len(full)  # Lightning counts the epoch's batches against the full length
    assert list(resumed) == order[8:]
    assert list(resumed) == order  # the skip was for one pass only
    resumed.resume(epoch=2, samples_done=8)
    resumed.set_epoch(3)  # a skip never leaks into another epoch
    full.set_epoch(3)
    assert list(resumed) == list(full)


def test_bad_rank_is_refused():
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        SubjectSampler(10, 2, 2)
