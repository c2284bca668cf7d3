"""Which labeled and unlabeled images each step sees.

Sampling is *counter-based*: the indices of step k are a pure function of (seed, k), so a resumed
run draws exactly what an uninterrupted one would, with no sampler state to checkpoint.

- Labeled: an endless concatenation of fresh random permutations of the labeled set (as the
  authors' ``CustomSampler``), cut into consecutive batches.
- Unlabeled: for each labeled item, ``mu`` images drawn uniformly from the whole pool, without
  replacement within an item and independently across items ("paired" is positional and random).
"""

from __future__ import annotations

import torch

from interlude.errors import DataError

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Hash integers into a 63-bit seed (splitmix64), so nearby steps get unrelated streams."""
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (part & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state & ((1 << 63) - 1)


def step_generator(seed: int, step: int, stream: int, device: torch.device | str = "cpu"):
    """A fresh generator for one (seed, step, stream) triple."""
    generator = torch.Generator(device=device)
    generator.manual_seed(mix_seed(seed, step, stream))
    return generator


STREAM_LABELED, STREAM_UNLABELED, STREAM_AUGMENT = 1, 2, 3


class StepSampler:
    """Global (all ranks) batch indices for a step."""

    def __init__(self, num_labeled: int, num_unlabeled: int, batch_size: int, mu: int, seed: int):
        if num_labeled == 0:
            raise DataError("the labeled set is empty")
        if mu > 0 and num_unlabeled < mu:
            raise DataError(
                f"train.mu={mu} unlabeled images per labeled image, but the unlabeled pool has "
                f"only {num_unlabeled}; lower train.mu"
            )
        self.num_labeled = num_labeled
        self.num_unlabeled = num_unlabeled
        self.batch_size = batch_size
        self.mu = mu
        self.seed = seed

    def labeled(self, step: int) -> torch.Tensor:
        """Indices ``(B,)`` into the labeled set."""
        n, b = self.num_labeled, self.batch_size
        start = step * b
        first_epoch, last_epoch = start // n, (start + b - 1) // n
        perms = [
            torch.randperm(n, generator=step_generator(self.seed, epoch, STREAM_LABELED))
            for epoch in range(first_epoch, last_epoch + 1)
        ]
        stream = torch.cat(perms)
        offset = start - first_epoch * n
        return stream[offset : offset + b]

    def unlabeled(self, step: int) -> torch.Tensor:
        """Indices ``(B, mu)`` into the unlabeled pool; distinct within each row."""
        generator = step_generator(self.seed, step, STREAM_UNLABELED)
        shape = (self.batch_size, self.mu)
        idx = torch.randint(self.num_unlabeled, shape, generator=generator)
        earlier = torch.ones(self.mu, self.mu, dtype=torch.bool).tril(-1)
        while True:
            repeated = ((idx[:, :, None] == idx[:, None, :]) & earlier).any(-1)
            if not repeated.any():
                return idx
            fresh = torch.randint(self.num_unlabeled, shape, generator=generator)
            idx = torch.where(repeated, fresh, idx)
