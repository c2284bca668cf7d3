"""The batched entry points training uses: weak views, RandAugmentMC + Cutout strong views, and
:func:`augment_views`, every view of a step in one go.

Images never leave the device and every random number comes from explicit generators
(:class:`.plan.StepDraws`), so a step's views are a pure function of the generators' states and a
resumed run is bit-identical. The op plan is drawn on the host, so everything that depends on it
(which image gets which op, the per-image parameters, the order in which images are grouped) is
worked out in numpy (:class:`.plan.StrongPlan`) and reaches the device as one host-to-device copy.
Each RandAugment round then reorders the batch once so that images sharing an op family are
contiguous, runs each family once on its slice (:mod:`.tensor_ops`) and writes the result back in
place; the last reordering back to natural order and Cutout are one gather and one masked fill.
A step is about 400 operators at the paper batch whatever its size
(``interlude.train.opcount`` counts them); the same code serves the CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from . import tensor_ops as ops
from .plan import StepDraws, StrongPlan, Upload, pad_of, strong_flags, to_device


def weak_augment(x: Tensor, generator: torch.Generator, hflip: bool,
                 pad_fraction: float = 0.125) -> Tensor:
    """Random horizontal flip (p=0.5) then reflect-pad and random crop back to ``H x W``.

    Padding is never materialised: each output pixel's reflected source pixel comes from a
    per-offset table and the image is read with one gather."""
    ops.check_images(x)
    n, c, h, w = x.shape
    pad = pad_of(h, pad_fraction)
    draws = StepDraws(n, 0, generator, None, hflip, pad, 0, 0.0)
    pixels = _weak_pixels(draws, x.device, h, w, pad)
    return x.reshape(n, c, h * w).gather(2, pixels.expand(n, c, h * w)).view(n, c, h, w)


def strong_augment(x: Tensor, generator: torch.Generator, n_ops: int = 2, prob: float = 0.5,
                   cutout_fraction: float = 0.5, fill: float = 127 / 255,
                   plan_generator: torch.Generator | None = None) -> Tensor:
    """RandAugmentMC (``n_ops`` rounds, each op applied with ``prob``) followed by Cutout.

    ``fill`` (grey) is what Cutout paints and what geometric ops bring in from outside the image.
    All random numbers are drawn up front, so the result depends only on the generator state.

    ``plan_generator`` (a CPU generator) samples the per-image op plan on the host: laying the
    batch out by op then needs no device-to-host copy, so a CUDA step never waits for the GPU
    here. Without it the plan comes from ``generator`` (one small sync on CUDA)."""
    ops.check_images(x)
    n, c = x.shape[:2]
    draws = StepDraws(0, n, generator, plan_generator, False, None, n_ops, prob)
    if n == 0:
        return x.clone(memory_format=torch.contiguous_format)
    upload = Upload()
    plan = StrongPlan(draws.ops, draws.magnitudes, draws.apply, c, upload)
    return apply_rounds(x, plan, upload.send(x.device), draws.signs, draws.centres,
                        cutout_fraction, fill)


def augment_views(images: Tensor, labeled_rows: np.ndarray, unlabeled_rows: np.ndarray | None,
                  views: Sequence[str], generator: torch.Generator,
                  plan_generator: torch.Generator | None, hflip: bool, pad_fraction: float = 0.125,
                  n_ops: int = 2, prob: float = 0.5, cutout_fraction: float = 0.5,
                  fill: float = 127 / 255) -> Tensor:
    """All views of a training step, float in ``[0, 1]``, concatenated in ``views`` order
    (natural order: lw, uw, ls, us): the weak view of every view, with RandAugment + Cutout on
    top for the strong ones (``ls``, ``us``).

    ``images`` (uint8 or float, on the training device) holds the step's images or a whole
    image store; ``labeled_rows`` / ``unlabeled_rows`` (host integer arrays) say which of its
    rows the labeled and unlabeled images of the step are, so the images are read straight from
    the store by the weak view's gather. Randomness: :class:`.plan.StepDraws` for all rows at
    once (weak draws for every row, then the strong rows' plan, signs and centres)."""
    c, h, w = images.shape[1:]
    if c not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {tuple(images.shape)}")
    strong = strong_flags(views)
    rows = [np.asarray(labeled_rows if view.startswith("l") else unlabeled_rows)
            for view in views]
    total = sum(len(r) for r in rows)
    n_strong = sum(len(r) for r, s in zip(rows, strong, strict=True) if s)
    pad = pad_of(h, pad_fraction)
    draws = StepDraws(total, n_strong, generator, plan_generator, hflip, pad, n_ops, prob)
    upload = Upload()
    sources = upload.add(np.concatenate(rows))
    plan = StrongPlan(draws.ops, draws.magnitudes, draws.apply, c, upload) if n_strong else None
    parts = upload.send(images.device)
    pixels = _weak_pixels(draws, images.device, h, w, pad)
    # the step's images (index_select: a row copy, faster on the CPU), then their pixels
    picked = images.index_select(0, parts[sources]).view(total, c, h * w)
    weak = picked.gather(2, pixels.expand(total, c, h * w)).view(total, c, h, w)
    if not weak.is_floating_point():
        weak = torch.div(weak, ops.weak_tables(images.device, h, w, pad).level)  # one pass
    if plan is None:
        return weak
    strong_rows = weak[total - n_strong:]  # augmented in place
    apply_rounds(strong_rows, plan, parts, draws.signs, draws.centres, cutout_fraction, fill,
                 out=strong_rows)
    return weak


def _weak_pixels(draws: StepDraws, device: torch.device, h: int, w: int, pad: int) -> Tensor:
    """``(n, 1, h w)``: the source pixel of each output pixel of the drawn flips and crops."""
    t = ops.weak_tables(device, h, w, pad)
    flip = None if draws.flip is None else to_device(draws.flip, device)
    return ops.weak_pixels(flip, to_device(draws.offsets, device), t)


def apply_rounds(x: Tensor, plan: StrongPlan, parts: list[Tensor], signs: Tensor,
                 centres: Tensor, cutout_fraction: float, fill: float,
                 out: Tensor | None = None) -> Tensor:
    """Run the rounds of ``plan`` on ``x`` (natural order), then Cutout, into ``out`` (which may
    be ``x`` itself) or new images. ``parts``: the plan's upload, on ``x``'s device."""
    n, c, h, w = x.shape
    side = int(cutout_fraction * min(h, w))
    t = ops.strong_tables(x.device, x.dtype, c, h, w, fill, max(side, 0))
    maps = _geometric_maps(plan, parts, signs, t)
    current = x
    for r, rnd in enumerate(plan.rounds):
        if rnd.gather is None:
            continue
        current = current.index_select(0, parts[rnd.gather])  # fresh: the families overwrite it
        affine, autocontrast, blends, levels, _ = current.split(rnd.sizes)
        if len(affine):
            ops.resample(affine, maps[r], t)
        if len(autocontrast):
            ops.autocontrast(autocontrast, t)
        if rnd.blend is not None:
            ops.blends(blends, rnd, parts, t)
        if len(levels):
            ops.level_ops(levels, rnd, parts, t)
    if plan.final is not None:  # back to natural order: one gather
        if out is None:
            current = current.index_select(0, parts[plan.final])
        else:
            current = torch.index_select(current, 0, parts[plan.final], out=out)
    elif out is not None:
        current = out if current is out else out.copy_(current)
    elif current is x:
        current = x.clone(memory_format=torch.contiguous_format)
    if side <= 0:
        return current
    mask = ops.cutout_mask(to_device(centres, x.device), t)
    return torch.where(mask, t.fill, current, out=current)


def _geometric_maps(plan: StrongPlan, parts: list[Tensor], signs: Tensor,
                    t: ops.StrongTables) -> list[Tensor]:
    """The source pixel maps of every round's geometric rows (the sign is a device draw)."""
    if plan.affine is None:
        return []
    positions, base = (parts[i] for i in plan.affine)
    negative = to_device(signs, base.device).view(-1).index_select(0, positions) < t.half
    rows = base + negative
    if t.affine_maps is not None:
        return list(t.affine_maps[rows].split(plan.affine_sizes))
    return list(ops.affine_maps(t.affine[rows], t.basis, t.last, t.stride).split(
        plan.affine_sizes))


def apply_ops(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """Apply op ``op[i]`` with magnitude ``mag[i]`` and sign ``sign[i]`` (+-1) to image ``i``:
    one RandAugment round of the training path with every op applied, and no Cutout (what the
    tests compare with the PIL path, op by op)."""
    n = x.shape[0]
    upload = Upload()
    plan = StrongPlan(op.cpu().numpy().reshape(n, 1), mag.cpu().numpy().reshape(n, 1),
                      np.ones((n, 1), dtype=bool), x.shape[1], upload)
    signs = torch.where(sign < 0, 0.25, 0.75).float().view(n, 1)  # sign uniforms: -1 below 0.5
    return apply_rounds(x, plan, upload.send(x.device), signs, torch.zeros(n, 2), 0.0, fill)
