"""Counter-based sampling: labeled epochs are permutations, unlabeled rows have no repeats."""

from __future__ import annotations

import pytest
import torch

from interlude.data.sampler import StepSampler
from interlude.errors import DataError


def test_labeled_stream_is_concatenated_permutations():
    sampler = StepSampler(num_labeled=10, num_unlabeled=50, batch_size=4, mu=3, seed=1)
    stream = torch.cat([sampler.labeled(step) for step in range(5)])  # 20 = two epochs
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:20].tolist()) == list(range(10))


def test_sampling_is_a_function_of_seed_and_step():
    a = StepSampler(10, 50, 4, 3, seed=1)
    b = StepSampler(10, 50, 4, 3, seed=1)
    c = StepSampler(10, 50, 4, 3, seed=2)
    assert torch.equal(a.unlabeled(7), b.unlabeled(7))
    assert torch.equal(a.labeled(7), b.labeled(7))
    assert not torch.equal(a.unlabeled(7), c.unlabeled(7))
    assert not torch.equal(a.unlabeled(7), a.unlabeled(8))


def test_unlabeled_rows_distinct_even_with_tiny_pool():
    sampler = StepSampler(10, num_unlabeled=8, batch_size=64, mu=7, seed=0)
    for step in range(5):
        idx = sampler.unlabeled(step)
        assert idx.shape == (64, 7)
        assert all(len(set(row)) == 7 for row in idx.tolist())
        assert idx.min() >= 0 and idx.max() < 8


def test_mu_larger_than_pool_rejected():
    with pytest.raises(DataError, match="lower train.mu"):
        StepSampler(10, num_unlabeled=3, batch_size=2, mu=7, seed=0)
