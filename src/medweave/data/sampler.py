"""SubjectSampler: which subjects each DDP rank sees, in an order that a resumed run can replay.

One row of a split is one subject, so sharding rows shards subjects: every subject lands on
exactly one rank. The order is a function of (seed, epoch) alone, never of the global RNG, so a
run preempted mid-epoch and resumed draws the same batches as one that was never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import DistributedSampler


class SubjectSampler(DistributedSampler):
    """Args:
    n: subjects in the split.
    num_replicas, rank: the DDP world size and this process's rank.
    shuffle: a new permutation per epoch (training); off for evaluation.
    seed: fixes every epoch's permutation, identical on all ranks.
    pad: repeat a few subjects so every rank gets the same count. Training needs it (every rank
        must take the same number of optimizer steps); evaluation must not (a repeated subject
        would count twice in a metric), and ranks may then hold one subject more or less.

    A subclass of DistributedSampler, so that Lightning keeps it instead of wrapping it.
    """

    def __init__(
        self,
        n: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        pad: bool = True,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside a world of {num_replicas}")
        # Not calling super().__init__: it needs a dataset and an initialised process group.
        self.n, self.num_replicas, self.rank = n, num_replicas, rank
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch, self.skip = 0, 0
        self.drop_last = False

    @property
    def num_samples(self) -> int:
        if self.pad:
            return math.ceil(self.n / self.num_replicas)
        return len(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        # The whole epoch's share, even while skipping: Lightning counts batches against it.
        return self.num_samples

    def order(self) -> np.ndarray:
        """This rank's subjects (row positions) for the current epoch, before any skip."""
        if self.shuffle:
            rows = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            rows = np.arange(self.n)
        if self.pad and self.n:
            rows = np.resize(rows, self.num_samples * self.num_replicas)  # repeats cyclically
        return rows[self.rank :: self.num_replicas]

    def resume(self, epoch: int, samples_done: int) -> None:
        """Continue ``epoch`` after its first ``samples_done`` subjects (a mid-epoch checkpoint)."""
        self.epoch, self.skip = epoch, samples_done

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0  # a skip belongs to the epoch it was set for
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rows, self.skip = self.order()[self.skip :], 0
        return iter(rows.tolist())


class PoissonSubjectSampler(DistributedSampler):
    """Poisson sampling, as the DP-SGD accountant assumes: every step, each training subject joins
    the (global) batch on its own with probability ``sample_rate``, so batch sizes vary.

    Args:
        n: subjects in the split.
        sample_rate: the global probability q that a subject is in a step's batch.
        num_replicas, rank: the DDP world size and this process's rank.
        seed: fixes every step's draw, identical on all ranks.
        steps: batches per epoch (default ``round(1 / sample_rate)``: one pass in expectation).

    Every rank draws the same global mask from (seed, epoch, step) alone and keeps the subjects of
    its own shard (row % num_replicas == rank): the union over ranks is exactly one Poisson draw over
    the whole split, and a resumed run replays it from the step it stopped at. It yields lists of
    rows (a DataLoader with ``batch_size=None``); a rank whose share of a draw is empty gets ``[]``
    (the data module serves a placeholder, training/dp_sgd.py adds nothing for it).
    """

    def __init__(
        self,
        n: int,
        sample_rate: float,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        steps: int | None = None,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside a world of {num_replicas}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate={sample_rate}: expected a probability in (0, 1]")
        self.n, self.sample_rate, self.num_replicas, self.rank = n, sample_rate, num_replicas, rank
        self.seed, self.steps = seed, steps or max(round(1 / sample_rate), 1)
        self.epoch, self.skip = 0, 0
        self.shuffle, self.drop_last = True, False

    def __len__(self) -> int:
        return self.steps

    def draw(self, epoch: int, step: int) -> np.ndarray:
        """The global batch of one step: row positions, on every rank the same."""
        mask = np.random.default_rng([self.seed, epoch, step]).random(self.n) < self.sample_rate
        return np.flatnonzero(mask)

    def resume(self, epoch: int, steps_done: int) -> None:
        """Continue ``epoch`` after its first ``steps_done`` batches (a mid-epoch checkpoint)."""
        self.epoch, self.skip = epoch, steps_done

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        first, self.skip = self.skip, 0
        for step in range(first, self.steps):
            rows = self.draw(self.epoch, step)
            yield rows[rows % self.num_replicas == self.rank].tolist()
