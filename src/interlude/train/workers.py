"""Per-image augmentation in DataLoader worker processes (``train.augment_on: workers``).

The alternative to batched augmentation on the device, for when the device is busy or the images
are large: the authors' pipeline (PIL ops per image) runs in ``train.num_workers`` processes that
prefetch upcoming steps while the device trains on the current one.

Exactness is kept without any loader state in checkpoints:

- *which* images a step sees comes from the same counter-based :class:`StepSampler` as the device
  path (indices are a pure function of (seed, step));
- *how* they are augmented comes from a ``random.Random`` seeded per (seed, step, global row), so
  the result does not depend on the worker that made it, on the number of workers, or on the
  number of DDP ranks: a rank's rows are augmented exactly as in a single-process run.

One dataset item is one labeled row of a step with its ``mu`` paired unlabeled images (as the
authors' paired dataset); the collate function concatenates a step's items into one uint8 tensor
in natural view order (``lw``, ``uw``, ``ls``, ``us``), so the main process does a single
host-to-device copy and normalises on the device.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from interlude.data.augment import strong_augment_per_image, weak_augment_per_image
from interlude.data.rows import ImageRows, as_rows
from interlude.data.sampler import StepSampler, mix_seed

STREAM_WORKER_AUGMENT = 4
"""Seed stream of per-row augmentation (1-3 are the sampler's and the device augmentation's)."""

ItemKey = tuple[int, int, int, tuple[int, ...]]
"""(step, global row, labeled index, paired unlabeled indices)."""


def row_rng(seed: int, step: int, row: int) -> random.Random:
    """The augmentation randomness of one global row of one step."""
    return random.Random(mix_seed(seed, step, STREAM_WORKER_AUGMENT, row))


def augment_image(image: np.ndarray, rng: random.Random, strong: bool, hflip: bool) -> np.ndarray:
    """Weak (or weak + strong) view of one uint8 ``(C, H, W)`` image through PIL."""
    grey = image.shape[0] == 1
    pil = Image.fromarray(image[0] if grey else np.ascontiguousarray(image.transpose(1, 2, 0)))
    pil = weak_augment_per_image(pil, rng, hflip)
    if strong:
        pil = strong_augment_per_image(pil, rng)
    array = np.asarray(pil, dtype=np.uint8)
    return array[None] if grey else array.transpose(2, 0, 1)


class PairedViews(Dataset):
    """Item = all views of one labeled row of a step and of its ``mu`` paired unlabeled images."""

    def __init__(
        self,
        labeled: np.ndarray | ImageRows,
        unlabeled: np.ndarray | ImageRows | None,
        views: tuple[str, ...],
        hflip: bool,
        seed: int,
    ) -> None:
        self.labeled = as_rows(labeled)
        self.unlabeled = None if unlabeled is None else as_rows(unlabeled)
        self.views = views
        self.hflip = hflip
        self.seed = seed

    def __getitem__(self, key: ItemKey) -> dict[str, np.ndarray]:
        step, row, labeled_index, unlabeled_indices = key
        rng = row_rng(self.seed, step, row)
        out: dict[str, np.ndarray] = {}
        for view in self.views:  # natural order, so the rng is consumed in a fixed order
            if view.startswith("l"):
                sources = self.labeled.read([labeled_index])
            else:
                assert self.unlabeled is not None
                sources = self.unlabeled.read(np.asarray(unlabeled_indices, dtype=np.int64))
            strong = view.endswith("s")
            out[view] = np.stack([augment_image(im, rng, strong, self.hflip) for im in sources])
        return out


class StepKeys(Sampler[list[ItemKey]]):
    """Yields, for each step from ``start``, the item keys of this rank's rows."""

    def __init__(
        self,
        sampler: StepSampler,
        start: int,
        stop: int,
        rank: int = 0,
        world_size: int = 1,
        uses_unlabeled: bool = True,
    ) -> None:
        self.sampler = sampler
        self.start, self.stop = start, stop
        self.local_batch = sampler.batch_size // world_size
        self.first_row = rank * self.local_batch
        self.uses_unlabeled = uses_unlabeled

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def keys(self, step: int) -> list[ItemKey]:
        rows = slice(self.first_row, self.first_row + self.local_batch)
        # indices are made on the host by design; numpy() is a view, not a device read
        labeled = self.sampler.labeled(step)[rows].numpy().tolist()
        unlabeled = (
            self.sampler.unlabeled(step)[rows].numpy().tolist()
            if self.uses_unlabeled else [[] for _ in labeled]
        )
        return [
            (step, self.first_row + i, li, tuple(ui))
            for i, (li, ui) in enumerate(zip(labeled, unlabeled, strict=True))
        ]

    def __iter__(self) -> Iterator[list[ItemKey]]:
        for step in range(self.start, self.stop):
            yield self.keys(step)


class Collate:
    """A step's items -> ``{"x": uint8 (N, C, H, W) in natural view order}``."""

    def __init__(self, views: tuple[str, ...]) -> None:
        self.views = views

    def __call__(self, items: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        parts = [item[view] for view in self.views for item in items]
        return {"x": torch.from_numpy(np.concatenate(parts))}


class WorkerBatches:
    """Prefetching per-image augmentation for consecutive steps; restarts when a step is skipped.

    The DataLoader is created lazily at the first :meth:`get`, so a trainer that resumes from a
    checkpoint starts its workers at the resumed step.
    """

    def __init__(
        self,
        dataset: PairedViews,
        sampler: StepSampler,
        total_steps: int,
        num_workers: int,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        prefetch_steps: int = 2,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.total_steps = total_steps
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        self.pin_memory = pin_memory
        self.prefetch_steps = prefetch_steps
        self._iterator: Iterator[dict[str, torch.Tensor]] | None = None
        self._next_step = -1

    def get(self, step: int) -> torch.Tensor:
        """uint8 views of ``step`` (natural order), pinned when feeding CUDA."""
        if self._iterator is None or step != self._next_step:
            self._start(step)
        assert self._iterator is not None
        batch = next(self._iterator)
        self._next_step = step + 1
        return batch["x"]

    def _start(self, step: int) -> None:
        self.close()
        keys = StepKeys(
            self.sampler, step, max(self.total_steps, step + 1), self.rank, self.world_size,
            uses_unlabeled=self.dataset.unlabeled is not None,
        )
        workers = self.num_workers
        loader = DataLoader(
            self.dataset,
            batch_sampler=keys,
            num_workers=workers,
            collate_fn=Collate(self.dataset.views),
            pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch_steps if workers > 0 else None,
            persistent_workers=False,
            # workers draw no torch randomness; a private generator leaves the global one alone
            generator=torch.Generator().manual_seed(mix_seed(self.dataset.seed, step)),
        )
        self._iterator = iter(loader)

    def close(self) -> None:
        """Stop the worker processes (they are restarted on the next :meth:`get`)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
