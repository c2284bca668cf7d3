"""The input pipeline: a step's images gathered by index, augmented and normalised.

:class:`BatchBuilder` gathers a step's images by index and augments them as a batch on the
training device (``augment_on: device``), or takes them from DataLoader workers that augment per
image (``augment_on: workers``, :mod:`interlude.train.workers`), and returns a
:class:`~interlude.algorithms.base.Batch`.

Nothing here reads a device value on the host: host-made indices reach CUDA through pinned,
non-blocking copies, so the CPU can queue the next step while the GPU still runs this one.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from interlude.algorithms.base import Batch
from interlude.data.augment import augment_views, normalize, to_device, to_float
from interlude.data.base import ImageSet
from interlude.data.sampler import STREAM_AUGMENT, StepSampler, step_generator
from interlude.train.opcount import AUGMENT_RANGE
from interlude.train.workers import PairedViews, WorkerBatches

DEVICE_RESIDENT_BYTES = 2 << 30  # image sets up to 2 GiB are copied to the device once
_COPY_ROWS = 8192  # rows copied to the device at a time (bounds the host staging buffer)


class Preprocess:
    """uint8 ``(N, C, H, W)`` -> normalised float, in the model's memory format."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.normalize(to_float(images_uint8))


class ImageStore:
    """The labeled and unlabeled images, read by row: resident on the device when small and in
    RAM (one tensor, labeled rows first, so a step's images are read straight from it by the weak
    view's gather), else only the step's rows are read on the host and copied (rows ``on_disk``,
    the image cache or memory maps, are never copied whole)."""

    def __init__(self, labeled: ImageSet, unlabeled: ImageSet | None,
                 device: torch.device) -> None:
        self.device = device
        self.arrays = [labeled.images] + ([unlabeled.images] if unlabeled is not None else [])
        self.offset = len(labeled.images)  # unlabeled image i is row offset + i
        self.on_device = (sum(a.nbytes for a in self.arrays) <= DEVICE_RESIDENT_BYTES
                          and not any(a.on_disk for a in self.arrays))
        if self.on_device:
            shape = (sum(len(a) for a in self.arrays), *self.arrays[0].shape[1:])
            self.images = torch.empty(shape, dtype=torch.uint8, device=device)
            start = 0
            for array in self.arrays:
                for rows in array.chunks(_COPY_ROWS):
                    self.images[start:start + len(rows)].copy_(
                        torch.from_numpy(np.ascontiguousarray(rows)))
                    start += len(rows)
            self.arrays = []

    def rows(self, labeled: torch.Tensor,
             unlabeled: torch.Tensor | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
        """``(images, labeled rows, unlabeled rows)`` for a step's (host) indices: the resident
        store and rows into it, or the step's images read on the host (in sorted order, so
        memmap reads stay sequential), copied to the device, and their rows."""
        idx_l = labeled.numpy()
        idx_u = None if unlabeled is None else unlabeled.numpy()
        if self.on_device:
            return self.images, idx_l, None if idx_u is None else self.offset + idx_u
        parts, rows, start = [], [], 0
        for array, idx in zip(self.arrays, (idx_l, idx_u), strict=False):
            if idx is None:
                continue
            order = np.argsort(idx, kind="stable")
            parts.append(torch.from_numpy(array.read(idx[order])))
            row = np.empty(len(idx), dtype=np.int64)
            row[order] = start + np.arange(len(idx))
            rows.append(row)
            start += len(idx)
        batch = to_device(torch.cat(parts) if len(parts) > 1 else parts[0], self.device)
        return batch, rows[0], rows[1] if len(rows) > 1 else None


class BatchBuilder:
    """Builds one step's :class:`Batch`: views in natural order, labels, pool indices."""

    def __init__(
        self,
        labeled: ImageSet,
        unlabeled: ImageSet,
        sampler: StepSampler,
        views: tuple[str, ...],
        preprocess: Preprocess,
        hflip: bool,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        augment_on: str = "device",
        num_workers: int = 0,
        total_steps: int = 0,
    ) -> None:
        self.labels = torch.from_numpy(labeled.labels).to(device)
        self.uses_unlabeled = "uw" in views or "us" in views
        self.workers: WorkerBatches | None = None
        if augment_on == "workers":
            dataset = PairedViews(
                labeled.images, unlabeled.images if self.uses_unlabeled else None, views,
                hflip, seed,
            )
            self.workers = WorkerBatches(
                dataset, sampler, total_steps, num_workers, rank, world_size,
                pin_memory=device.type == "cuda",
            )
        else:  # images live where they are augmented
            self.store = ImageStore(labeled, unlabeled if self.uses_unlabeled else None, device)
        self.sampler = sampler
        self.views = views
        self.preprocess = preprocess
        self.hflip = hflip
        self.seed = seed
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.local_batch = sampler.batch_size // world_size
        self.last_build_seconds = 0.0

    def indices(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's labeled indices ``(b,)`` and unlabeled indices ``(b, mu)``."""
        rows = slice(self.rank * self.local_batch, (self.rank + 1) * self.local_batch)
        idx_l = self.sampler.labeled(step)[rows]
        idx_u = self.sampler.unlabeled(step)[rows] if self.uses_unlabeled else None
        return idx_l, idx_u

    def build(self, step: int) -> Batch:
        """Augmented, normalised views of ``step`` (natural order), labels and pool indices."""
        started = time.perf_counter()
        idx_l, idx_u = self.indices(step)
        if self.workers is not None:
            x = self.preprocess(to_device(self.workers.get(step), self.device))
        else:
            x = self._augment_on_device(step, idx_l, idx_u)
        idx_l_device = to_device(idx_l, self.device)
        labels = self.labels.index_select(0, idx_l_device)
        flat_u = to_device(idx_u.reshape(-1), self.device) if idx_u is not None else None
        self.last_build_seconds = time.perf_counter() - started
        return Batch(labels=labels, unlabeled_indices=flat_u, labeled_indices=idx_l_device, x=x)

    def _augment_on_device(
        self, step: int, idx_l: torch.Tensor, idx_u: torch.Tensor | None
    ) -> torch.Tensor:
        """Batched weak/strong views of every view at once; randomness from generators per
        (seed, step, rank).

        The RandAugment op plan comes from a host generator, so laying images out by op never
        copies device values to the host (no sync on CUDA); pixel-level draws stay on the device.
        ``augment_views`` draws every random number of the step from these two generators, so
        the views are a function of (seed, step, rank), and dispatches a few hundred operators
        for the whole step (``interlude.train.opcount``).
        """
        generator = step_generator(self.seed, step, STREAM_AUGMENT * 1000 + self.rank, self.device)
        plan = step_generator(self.seed, step, STREAM_AUGMENT * 1000 + 500 + self.rank, "cpu")
        images, rows_l, rows_u = self.store.rows(
            idx_l, idx_u.reshape(-1) if idx_u is not None else None)
        with torch.profiler.record_function(AUGMENT_RANGE):  # a label in profiles, no sync
            x = augment_views(images, rows_l, rows_u, self.views, generator, plan, self.hflip)
        return self.preprocess.normalize(x)

    def close(self) -> None:
        """Stop augmentation workers, if any (restarted on the next :meth:`build`)."""
        if self.workers is not None:
            self.workers.close()
