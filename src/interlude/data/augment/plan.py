"""The host side of RandAugment: the op list and magnitude tables, a step's random draws, and the
layout of each RandAugment round (which rows each op family reads, with which parameters).

Everything here is decided on the host, in numpy, and reaches the device as one copy
(:class:`Upload`): the tensor ops never read a device value back (no sync on CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

OP_NAMES = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)
"""FixMatch's RandAugment pool (kekmodel/FixMatch-pytorch ``fixmatch_augment_pool``)."""
OP = {name: i for i, name in enumerate(OP_NAMES)}
GEOMETRIC = tuple(OP[k] for k in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"))
SIGNED = frozenset(GEOMETRIC)  # ops whose magnitude gets a random sign (as in kekmodel)
PARAMETER_MAX = 10
# kekmodel's fixmatch_augment_pool mappings for v in 0..9, computed with its exact expressions so
# the batched path and the PIL path use the same integer parameters.
ENHANCE = tuple(float(v) * 0.9 / PARAMETER_MAX + 0.05 for v in range(PARAMETER_MAX))
POSTERIZE_BITS = tuple(int(v * 4 / PARAMETER_MAX) + 4 for v in range(PARAMETER_MAX))
ROTATE_DEG = tuple(int(v * 30 / PARAMETER_MAX) for v in range(PARAMETER_MAX))
SHEAR = tuple(float(v) * 0.3 / PARAMETER_MAX for v in range(PARAMETER_MAX))
TRANSLATE = SHEAR  # fraction of the image size, max 0.3
SOLARIZE = tuple(256 - int(v * 256 / PARAMETER_MAX) for v in range(PARAMETER_MAX))
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, what PIL's convert("L") uses


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Move to ``device``; host tensors go to CUDA through pinned memory without blocking.

    A plain ``.to("cuda")`` of pageable memory synchronises the stream, which would stall the
    host once per step; the pinned copy is ordered on the stream instead."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class Upload:
    """Host-made int64 arrays that reach the device as one (pinned, non-blocking) copy."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def add(self, array: np.ndarray) -> int:
        """Register ``array``; returns its slot in :meth:`send`'s list."""
        self.arrays.append(np.asarray(array, dtype=np.int64).reshape(-1))
        return len(self.arrays) - 1

    def send(self, device: torch.device) -> list[Tensor]:
        if not self.arrays:
            return []
        joined = to_device(torch.from_numpy(np.concatenate(self.arrays)), device)
        return list(joined.split([len(a) for a in self.arrays]))


# ----------------------------------------------------------------------------- draws


def uniform(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def sample_strong_plan(n: int, generator: torch.Generator, n_ops: int = 2,
                       prob: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """RandAugmentMC's choices for ``n`` images: op ids, magnitudes in 1..9, and apply flags."""
    device = generator.device
    ops = torch.randint(0, len(OP_NAMES), (n, n_ops), generator=generator, device=device)
    magnitudes = torch.randint(1, PARAMETER_MAX, (n, n_ops), generator=generator, device=device)
    apply = uniform(generator, n, n_ops) < prob
    return ops, magnitudes, apply


class StepDraws:
    """Every random number of a step's views, in a fixed order, so the views are a pure function
    of the generators' states (seeded per (seed, step, rank) by the trainer):

    - weak (``pad`` given): flip uniforms ``(n_weak, 1)`` (flip where < 0.5; only with
      ``hflip``), then crop offsets ``(n_weak, 2)`` in ``0..2 pad`` (``(y, x)``);
    - strong: the op plan (:func:`sample_strong_plan`) from ``plan_generator`` when given (a CPU
      generator: the plan is needed on the host), else from ``generator``; then sign uniforms
      ``(n_strong, n_ops)`` (a geometric op's sign is -1 where < 0.5) and Cutout centres
      ``(n_strong, 2)`` (``(y, x)`` in ``[0, 1)``) from ``generator``.

    Pixel-level draws stay on the generator's device; the plan is numpy."""

    def __init__(self, n_weak: int, n_strong: int, generator: torch.Generator,
                 plan_generator: torch.Generator | None, hflip: bool, pad: int | None,
                 n_ops: int, prob: float) -> None:
        """``pad=None``: no weak draws (``strong_augment`` alone)."""
        device = generator.device
        weak = pad is not None
        self.flip = uniform(generator, n_weak, 1) if weak and hflip else None
        self.offsets = (torch.randint(0, 2 * pad + 1, (n_weak, 2), generator=generator,
                                      device=device) if weak else None)
        self.ops = self.magnitudes = np.zeros((0, n_ops), dtype=np.int64)
        self.apply = np.zeros((0, n_ops), dtype=bool)
        self.signs = self.centres = None
        if not n_strong:
            return
        ops, mags, apply = sample_strong_plan(n_strong, plan_generator or generator, n_ops, prob)
        host = torch.stack([ops, mags, apply.long()]).cpu().numpy()  # a device plan: one sync
        self.ops, self.magnitudes, self.apply = host[0], host[1], host[2].astype(bool)
        self.signs = uniform(generator, n_strong, n_ops)
        self.centres = uniform(generator, n_strong, 2)


# ----------------------------------------------------------------------------- round layout
# Op families, in the order a round lays its batch out (untouched images last).
F_AFFINE, F_AUTOCONTRAST, F_BRIGHTNESS, F_COLOR, F_CONTRAST, F_SHARPNESS = range(6)
F_POSTERIZE, F_EQUALIZE, F_SOLARIZE, F_UNTOUCHED = range(6, 10)
_FAMILY_OF = {
    "AutoContrast": F_AUTOCONTRAST, "Brightness": F_BRIGHTNESS, "Color": F_COLOR,
    "Contrast": F_CONTRAST, "Equalize": F_EQUALIZE, "Identity": F_UNTOUCHED,
    "Posterize": F_POSTERIZE, "Sharpness": F_SHARPNESS, "Solarize": F_SOLARIZE,
}
FAMILY = np.array([_FAMILY_OF.get(name, F_AFFINE) for name in OP_NAMES])
GEOMETRIC_KIND = np.zeros(len(OP_NAMES), dtype=np.int64)
GEOMETRIC_KIND[list(GEOMETRIC)] = np.arange(len(GEOMETRIC))


@dataclass
class Round:
    """One RandAugment round as the host laid it out: family sizes and upload slots."""

    sizes: list[int]  # rows of: affine, autocontrast, blends, level ops, untouched
    blend_counts: list[int]  # Brightness, Color, Contrast, Sharpness
    level_sizes: list[int]  # Posterize, Equalize, Solarize
    gather: int | None  # rows of the current batch in this round's order (None: unchanged)
    blend: int | None  # magnitudes of the blend rows
    posterize: int | None  # magnitude of each (Posterize or Equalize row, channel)
    solarize: int | None  # magnitude of each (level row, channel); 0 (threshold 256) if not Solarize


class StrongPlan:
    """Which rows every round reads, in which order, with which parameters: all from the host
    plan, in numpy, registered with one :class:`Upload` (no device value is ever read back).

    In each round images are sorted (stably) by op family, so every family is one contiguous
    slice; the batch stays in that order for the next round, whose gather indices are composed
    with it, and one final gather restores natural order."""

    def __init__(self, ops: np.ndarray, mags: np.ndarray, apply: np.ndarray, channels: int,
                 upload: Upload) -> None:
        n, n_ops = ops.shape
        family = FAMILY[ops]
        if channels == 1:  # Color is the identity on grey images
            family = np.where(ops == OP["Color"], F_UNTOUCHED, family)
        family = np.where(apply, family, F_UNTOUCHED)
        self.rounds: list[Round] = []
        affine_rows = []  # (image, round) of each geometric op, round by round in round order
        position = np.arange(n)  # row of image i in the current batch
        for r in range(n_ops):
            order = np.argsort(family[:, r], kind="stable")
            self.rounds.append(_round(order, family[order, r], mags[order, r],
                                      position[order], channels, upload))
            affine_rows.append(order[: self.rounds[-1].sizes[0]] * n_ops + r)
            position = np.empty(n, dtype=np.int64)
            position[order] = np.arange(n)
        self.affine_sizes = [len(rows) for rows in affine_rows]  # per round
        self.affine: tuple[int, int] | None = None
        """Upload slots: sign positions and affine-table rows (sign aside) of the geometric ops
        of all rounds, in round order."""
        if sum(self.affine_sizes):
            rows = np.concatenate(affine_rows)
            base = (GEOMETRIC_KIND[ops] * PARAMETER_MAX + mags).reshape(-1)[rows] * 2
            self.affine = (upload.add(rows), upload.add(base))
        self.final = None if np.array_equal(position, np.arange(n)) else upload.add(position)
        """Row of image ``i`` in the last round's batch (None: already natural order)."""


def _round(order: np.ndarray, family: np.ndarray, mag: np.ndarray, gather: np.ndarray,
           channels: int, upload: Upload) -> Round:
    """Lay out one round whose rows, sorted by family (``order``), have ``family`` and ``mag``
    and sit at rows ``gather`` of the current batch."""
    n = len(order)
    count = np.bincount(family, minlength=F_UNTOUCHED + 1)
    start = np.concatenate([[0], np.cumsum(count)])

    def slot(first: int, stop: int, values: np.ndarray) -> int | None:
        return upload.add(values) if stop > first else None

    unchanged = count[F_UNTOUCHED] == n and np.array_equal(gather, np.arange(n))
    blends = slice(start[F_BRIGHTNESS], start[F_POSTERIZE])
    levels = slice(start[F_POSTERIZE], start[F_UNTOUCHED])
    thresholds = np.where(family[levels] == F_SOLARIZE, mag[levels], 0)  # 0: threshold 256
    return Round(
        sizes=[int(v) for v in (count[F_AFFINE], count[F_AUTOCONTRAST],
                                blends.stop - blends.start,
                                count[F_POSTERIZE:F_SOLARIZE + 1].sum(), count[F_UNTOUCHED])],
        blend_counts=[int(count[f]) for f in range(F_BRIGHTNESS, F_SHARPNESS + 1)],
        level_sizes=[int(count[f]) for f in (F_POSTERIZE, F_EQUALIZE, F_SOLARIZE)],
        gather=None if unchanged else upload.add(gather),
        blend=slot(blends.start, blends.stop, mag[blends]),
        posterize=slot(start[F_POSTERIZE], start[F_EQUALIZE],
                       np.repeat(mag[start[F_POSTERIZE]:start[F_SOLARIZE]], channels)),
        solarize=slot(start[F_SOLARIZE], start[F_UNTOUCHED], np.repeat(thresholds, channels)),
    )


def pad_of(h: int, pad_fraction: float) -> int:
    """Reflect padding of the weak view's random crop (at least one pixel)."""
    return max(1, int(pad_fraction * h))


def strong_flags(views: Sequence[str]) -> list[bool]:
    """Which views are strong (``ls``, ``us``); strong views must come last (natural order)."""
    strong = [view.endswith("s") for view in views]
    if sorted(strong) != strong:
        raise ValueError(f"strong views must come last (natural order), got {tuple(views)}")
    return strong
