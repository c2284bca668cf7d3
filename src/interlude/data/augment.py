"""Batched weak/strong augmentation on tensors, plus a per-image PIL reference.

The batched path is what training uses: images never leave the device, and every random number
comes from one explicit ``torch.Generator``, so a step's views are a pure function of its seed and
a resumed run is bit-identical. RandAugmentMC follows kekmodel/FixMatch-pytorch (op pool,
magnitude mapping, op sampling). The PIL functions at the bottom are the per-image reference
(``augment_on: workers`` and the speed baseline).

Few operators per step (launch overhead): on a GPU every dispatched operator costs host time
whatever the batch size, so the work is organised to dispatch few of them. All random numbers are
drawn first, in the same calls and order as always (so the views of a (seed, step) never change);
the op plan is drawn on the host, so everything that depends on it (which image gets which op, the
per-image parameters, the order in which images are grouped) is worked out in numpy and reaches
the device as *one* host-to-device copy. Each RandAugment round then reorders the batch once so
that images sharing an op family are contiguous, runs each family once on its slice and writes
the result back in place (the five geometric ops as one gather through a table of the source
pixel maps of every (op, magnitude, sign), made once per image size; Brightness/Color/Contrast/
Sharpness as one blend against a per-image degenerate image made on each family's rows;
Solarize as one ``where``; Posterize/Equalize as one lookup-table gather); the last reordering
back to natural order and Cutout are one gather and one masked fill. :func:`augment_views` does
all views of a training step (weak for every view, strong for the strong ones) in one go, about
400 operators at the paper batch whatever its size; ``interlude.train.opcount`` counts them.
The previous implementation (one call per op per view) is kept in ``tests/augment_reference.py``
and the outputs are compared bit for bit.

On a CPU launches are cheap and the time goes to passes over the batch, so each family works on
its own rows only and nothing is computed per pixel that a table made once can hold (the
geometric maps, Cutout's row and column ranges); the reorderings use ``index_select`` (about
twice as fast as advanced indexing on the CPU). The same code serves both devices: on a CPU it
is faster than the per-op implementation, and it dispatches fewer operators than it did.

Agreement with the PIL reference: the magnitude tables and the lookup-table ops (Equalize,
Posterize, Solarize) match exactly, and Cutout paints the same square for the same draw; the
blends (Brightness, Color, Contrast, Sharpness) and AutoContrast differ by at most one uint8
level (PIL rounds to uint8); the geometric ops use PIL's coordinate map but can pick a source
pixel one pixel away at exact ties (see :func:`_affine`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import Tensor

OP_NAMES = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)
_OP = {name: i for i, name in enumerate(OP_NAMES)}
_GEOMETRIC = tuple(_OP[k] for k in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"))
_SIGNED = frozenset(_GEOMETRIC)  # ops whose magnitude gets a random sign (as in kekmodel)
PARAMETER_MAX = 10
# kekmodel's fixmatch_augment_pool mappings for v in 0..9, computed with its exact expressions so
# the batched path and the PIL reference agree to the last integer.
_ENHANCE = tuple(float(v) * 0.9 / PARAMETER_MAX + 0.05 for v in range(PARAMETER_MAX))
_POSTERIZE_BITS = tuple(int(v * 4 / PARAMETER_MAX) + 4 for v in range(PARAMETER_MAX))
_ROTATE_DEG = tuple(int(v * 30 / PARAMETER_MAX) for v in range(PARAMETER_MAX))
_SHEAR = tuple(float(v) * 0.3 / PARAMETER_MAX for v in range(PARAMETER_MAX))
_TRANSLATE = _SHEAR  # fraction of the image size, max 0.3
_SOLARIZE = tuple(256 - int(v * 256 / PARAMETER_MAX) for v in range(PARAMETER_MAX))
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, what PIL's convert("L") uses


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in ``[0, 1]``; float input is returned unchanged."""
    return x if x.is_floating_point() else x.to(torch.float32).div_(255)


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Per-channel ``(x - mean) / std``; ``mean``/``std`` may be sequences or tensors."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean_t) / std_t


def _check(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        raise ValueError(f"expected float (N, C in {{1, 3}}, H, W) images, got {x.dtype} "
                         f"{tuple(x.shape)}")


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """Move to ``device``; host tensors go to CUDA through pinned memory without blocking.

    A plain ``.to("cuda")`` of pageable memory synchronises the stream, which would stall the
    host once per step; the pinned copy is ordered on the stream instead."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class _Upload:
    """Host-made int64 arrays that reach the device as one (pinned, non-blocking) copy."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def add(self, array: np.ndarray) -> int:
        self.arrays.append(np.asarray(array, dtype=np.int64).reshape(-1))
        return len(self.arrays) - 1

    def send(self, device: torch.device) -> list[Tensor]:
        if not self.arrays:
            return []
        joined = to_device(torch.from_numpy(np.concatenate(self.arrays)), device)
        return list(joined.split([len(a) for a in self.arrays]))


# ----------------------------------------------------------------------------- draws


def sample_strong_plan(n: int, generator: torch.Generator, n_ops: int = 2,
                       prob: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """RandAugmentMC's choices for ``n`` images: op ids, magnitudes in 1..9, and apply flags."""
    device = generator.device
    ops = torch.randint(0, len(OP_NAMES), (n, n_ops), generator=generator, device=device)
    magnitudes = torch.randint(1, PARAMETER_MAX, (n, n_ops), generator=generator, device=device)
    apply = _rand(generator, n, n_ops) < prob
    return ops, magnitudes, apply


class _Draws:
    """Every random number of a step's views, drawn view by view in the order a loop of
    :func:`weak_augment` then (strong views) :func:`strong_augment` calls draws them:

    - weak: flip uniforms ``(n, 1)`` (flip where < 0.5; only with ``hflip``), crop offsets
      ``(n, 2)`` in ``0..2 pad`` (rows ``(y, x)``);
    - strong: the op plan (:func:`sample_strong_plan`: op ids, magnitudes, apply uniforms), from
      ``plan_generator`` when given, then sign uniforms ``(n, n_ops)`` (a geometric op's sign is
      -1 where < 0.5) and Cutout centres ``(n, 2)`` (``(y, x)`` in ``[0, 1)``).

    The same calls with the same sizes consume the same random numbers, so the views are the
    loop's; the numbers go straight into buffers for all views (device buffers for pixel-level
    draws, numpy for the plan of a CPU plan generator), with no concatenation afterwards."""

    def __init__(self, sizes: Sequence[int], strong: Sequence[bool], generator: torch.Generator,
                 plan_generator: torch.Generator | None, hflip: bool, pad: int | None,
                 n_ops: int, prob: float) -> None:
        """``pad=None``: strong draws only (``strong_augment`` alone draws no weak numbers)."""
        device = generator.device
        total, n_strong = sum(sizes), sum(n for n, s in zip(sizes, strong, strict=True) if s)
        weak = pad is not None
        self.flip = torch.empty(total, 1, device=device) if hflip and weak else None
        self.offsets = torch.empty(total, 2, dtype=torch.long, device=device) if weak else None
        self.signs = torch.empty(n_strong, n_ops, device=device)
        self.centres = torch.empty(n_strong, 2, device=device)
        self.ops = np.empty((n_strong, n_ops), dtype=np.int64)
        self.magnitudes = np.empty((n_strong, n_ops), dtype=np.int64)
        uniforms = np.empty((n_strong, n_ops), dtype=np.float32)
        planner = plan_generator or generator
        strong_sizes = [n for n, s in zip(sizes, strong, strict=True) if s]
        flips = iter(self.flip.split(sizes) if self.flip is not None else ())
        offsets = iter(self.offsets.split(sizes) if self.offsets is not None else ())
        signs, centres = iter(self.signs.split(strong_sizes)), iter(self.centres.split(strong_sizes))
        strong_row = 0
        for n, is_strong in zip(sizes, strong, strict=True):
            if self.flip is not None:
                next(flips).uniform_(generator=generator)
            if self.offsets is not None:
                next(offsets).random_(0, 2 * pad + 1, generator=generator)
            if not is_strong:
                continue
            rows = slice(strong_row, strong_row + n)
            if planner.device.type == "cpu":  # written straight into numpy memory
                torch.from_numpy(self.ops[rows]).random_(0, len(OP_NAMES), generator=planner)
                torch.from_numpy(self.magnitudes[rows]).random_(1, PARAMETER_MAX,
                                                                generator=planner)
                torch.from_numpy(uniforms[rows]).uniform_(generator=planner)
            else:  # a device plan is read back: one sync (pass a CPU plan_generator to avoid it)
                ops = torch.randint(0, len(OP_NAMES), (n, n_ops), generator=planner,
                                    device=planner.device)
                mags = torch.randint(1, PARAMETER_MAX, (n, n_ops), generator=planner,
                                     device=planner.device)
                self.ops[rows], self.magnitudes[rows] = ops.cpu().numpy(), mags.cpu().numpy()
                uniforms[rows] = _rand(planner, n, n_ops).cpu().numpy()
            next(signs).uniform_(generator=generator)
            next(centres).uniform_(generator=generator)
            strong_row += n
        self.apply = uniforms < np.float32(prob)  # torch compares in float32 too


# ----------------------------------------------------------------------------- weak


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map indices in ``[-size + 1, 2 size - 2]`` into the image as reflect padding does."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def _pad(h: int, pad_fraction: float) -> int:
    return max(1, int(pad_fraction * h))


WEAK_MAPS_MAX_BYTES = 32 << 20
"""Largest table of whole-image pixel maps :func:`_weak_pixels` keeps (32 px: 1.3 MB)."""


@dataclass(frozen=True)
class _WeakTables:
    """Source pixel of every output row/column for each crop offset (and flip), made once."""

    rows: Tensor  # (2 pad + 1, h): source row * w for vertical offset o
    cols: Tensor  # (2 (2 pad + 1), w): source column for flip * (2 pad + 1) + horizontal offset
    maps: Tensor | None  # (rows x cols keys, h w): whole-image maps, when small enough
    key: Tensor  # (1, 2): key of (vertical, horizontal) offset in ``maps``
    half: Tensor  # 0.5, the flip threshold
    level: Tensor  # 255.0
    span: Tensor  # 2 pad + 1 (int64): key offset of the flipped columns


@functools.lru_cache(maxsize=16)
def _weak_tables(device: torch.device, h: int, w: int, pad: int) -> _WeakTables:
    span = 2 * pad + 1
    offsets = torch.arange(-pad, pad + 1, device=device)[:, None]
    rows = _reflect(offsets + torch.arange(h, device=device), h) * w
    cols = _reflect(offsets + torch.arange(w, device=device), w)
    cols = torch.cat([cols, w - 1 - cols])
    maps = None
    if span * 2 * span * h * w * 8 <= WEAK_MAPS_MAX_BYTES:
        maps = (rows[:, None, :, None] + cols[None, :, None, :]).reshape(span * 2 * span, h * w)
    return _WeakTables(
        rows=rows, cols=cols, maps=maps,
        key=torch.tensor([[2 * span, 1]], device=device),
        half=torch.tensor(0.5, device=device), level=torch.tensor(255.0, device=device),
        span=torch.tensor(span, device=device),
    )


def _weak_pixels(flip: Tensor | None, offsets: Tensor, t: _WeakTables) -> Tensor:
    """``(n, 1, h w)`` flat source pixel of each output pixel: reflect-padded crop, flipped.

    One row of the table of whole-image maps per image when the table is small (it is at the
    usual sizes); row and column tables added up otherwise."""
    n = len(offsets)
    if t.maps is not None:
        key = (offsets * t.key).sum(1, keepdim=True)  # (n, 1)
        if flip is not None:
            key = torch.where(flip < t.half, key + t.span, key)
        return t.maps[key]
    column_key = offsets[:, 1:]
    if flip is not None:
        column_key = torch.where(flip < t.half, column_key + t.span, column_key)
    rows = t.rows[offsets[:, 0]]
    cols = t.cols[column_key.view(n)]
    return (rows.unsqueeze(2) + cols.unsqueeze(1)).view(n, 1, -1)


def weak_augment(x: Tensor, generator: torch.Generator, hflip: bool,
                 pad_fraction: float = 0.125) -> Tensor:
    """Random horizontal flip (p=0.5) then reflect-pad and random crop back to ``H x W``.

    Padding is never materialised: each output pixel's reflected source pixel comes from a
    per-offset table and the image is read with one gather."""
    _check(x)
    n, c, h, w = x.shape
    pad = _pad(h, pad_fraction)
    draws = _Draws([n], [False], generator, None, hflip, pad, 0, 0.0)
    t = _weak_tables(x.device, h, w, pad)
    flip = None if draws.flip is None else to_device(draws.flip, x.device)
    pixels = _weak_pixels(flip, to_device(draws.offsets, x.device), t)
    index = pixels.expand(n, c, h * w)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)


# ----------------------------------------------------------------------------- strong: tables
# Op families, in the order a round lays its batch out (untouched images last).
_F_AFFINE, _F_AUTOCONTRAST, _F_BRIGHTNESS, _F_COLOR, _F_CONTRAST, _F_SHARPNESS = range(6)
_F_POSTERIZE, _F_EQUALIZE, _F_SOLARIZE, _F_UNTOUCHED = range(6, 10)
_FAMILY_OF = {
    "AutoContrast": _F_AUTOCONTRAST, "Brightness": _F_BRIGHTNESS, "Color": _F_COLOR,
    "Contrast": _F_CONTRAST, "Equalize": _F_EQUALIZE, "Identity": _F_UNTOUCHED,
    "Posterize": _F_POSTERIZE, "Sharpness": _F_SHARPNESS, "Solarize": _F_SOLARIZE,
}
_FAMILY = np.array([_FAMILY_OF.get(name, _F_AFFINE) for name in OP_NAMES])
_GEOMETRIC_KIND = np.zeros(len(OP_NAMES), dtype=np.int64)
_GEOMETRIC_KIND[list(_GEOMETRIC)] = np.arange(len(_GEOMETRIC))


def _lookup(table: Sequence[float], index: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.tensor(table, dtype=dtype, device=index.device)[index]


def _pixel_affine(op: Tensor, mag: Tensor, sign: Tensor, h: int, w: int) -> list[Tensor]:
    """PIL-style inverse maps ``(a, b, c, d, e, f)``: output ``(u, v)`` reads input
    ``(a u + b v + c, d u + e v + f)`` in continuous pixel coordinates (pixel centres at +0.5).
    Rotation is about the image centre, shear about the top-left corner, as in PIL."""
    dtype = torch.float64  # PIL maps coordinates in double; floor() must see the same values
    sign = sign.to(dtype)
    is_rot = op == _OP["Rotate"]
    angle = torch.where(is_rot, sign * _lookup(_ROTATE_DEG, mag, dtype), 0)
    phi = -torch.deg2rad(angle)
    cos, sin = phi.cos(), phi.sin()
    shear = sign * _lookup(_SHEAR, mag, dtype)
    zero = torch.zeros_like(shear)
    a, e = cos, cos
    b = sin + torch.where(op == _OP["ShearX"], shear, zero)
    d = -sin + torch.where(op == _OP["ShearY"], shear, zero)
    shift_x = sign * _lookup([int(t * w) for t in _TRANSLATE], mag, dtype)
    shift_y = sign * _lookup([int(t * h) for t in _TRANSLATE], mag, dtype)
    cx, cy = w / 2, h / 2
    c = torch.where(is_rot, cx - a * cx - b * cy, zero)
    c = c + torch.where(op == _OP["TranslateX"], shift_x, zero)
    f = torch.where(is_rot, cy - d * cx - e * cy, zero)
    f = f + torch.where(op == _OP["TranslateY"], shift_y, zero)
    return [a, b, c, d, e, f]


@dataclass(frozen=True)
class _StrongTables:
    """Everything constant a strong view needs at one (device, dtype, C, H, W, fill, Cutout
    side), made once: per-magnitude tables, the affine map of every (geometric op, magnitude,
    sign) and its source pixels, pixel grids, and 0-dim constants (a Python number in an op
    costs extra operators)."""

    affine: Tensor  # (5 * 10 * 2, 6) float64, row (kind * 10 + magnitude) * 2 + (sign < 0)
    affine_maps: Tensor | None
    """(rows of ``affine``, h w) int64: each map's source pixels (:func:`_affine_maps`), when
    small enough (:data:`AFFINE_MAPS_MAX_BYTES`); resampling is then a lookup, not float64 maths."""
    basis: Tensor  # (1, 1, 3, h w) float64: pixel centre x = u + 0.5, y = v + 0.5, and 1
    last: Tensor  # (1, 2, 1, 1) float64: (w - 1, h - 1), the last column and row
    stride: Tensor  # (1, 2, 1, 1) float64: (1, w), flat index of (x, y)
    enhance: Tensor  # (10,) blend factor per magnitude
    posterize: Tensor  # (10, 256) Posterize lookup table per magnitude, already / 255
    solarize: Tensor  # (10,) int64 threshold per magnitude
    gray: Tensor | None  # (1, 3, 1, 1) luma weights
    smooth: Tensor  # (c, 1, 3, 3) PIL's SMOOTH kernel / 13
    interior: Tensor  # (1, 1, h, w) bool: pixels the SMOOTH filter changes
    identity: Tensor  # (1, 256) int64 levels
    ones: Tensor  # (1, h w) int64, histogram increments
    fill_pixel: Tensor  # (1, 1, 1) the fill, the pixel outside the image
    lines_yx: Tensor  # (1, 2, max(h, w)) float32: row and column numbers (Cutout)
    zero: Tensor
    one: Tensor
    half: Tensor  # float32 (the uniforms' dtype)
    level: Tensor  # 255.0
    area: Tensor  # h * w (float, the grey mean's divisor)
    fill: Tensor
    hw: Tensor  # (2,) float32: (h, w), for Cutout
    half_side: Tensor  # float32 Cutout side / 2
    side: Tensor  # float32 Cutout side
    long_zero: Tensor
    long_one: Tensor
    long_two: Tensor
    long_level: Tensor  # 255
    long_area: Tensor  # h * w


AFFINE_MAPS_MAX_BYTES = 32 << 20
"""Largest table of geometric-op pixel maps :func:`_strong_tables` keeps (32 px: 0.8 MB)."""


@functools.lru_cache(maxsize=16)
def _strong_tables(device: torch.device, dtype: torch.dtype, c: int, h: int, w: int,
                   fill: float, side: int) -> _StrongTables:
    def const(value, kind=dtype) -> Tensor:
        return torch.tensor(value, dtype=kind, device=device)

    kinds, mags, negative = (g.reshape(-1) for g in torch.meshgrid(
        torch.arange(len(_GEOMETRIC)), torch.arange(PARAMETER_MAX), torch.arange(2),
        indexing="ij"))
    op = torch.tensor(_GEOMETRIC)[kinds]
    affine = torch.stack(_pixel_affine(op, mags, torch.where(negative > 0, -1, 1), h, w), 1)
    u = torch.arange(w, dtype=torch.float64).add_(0.5).view(1, w).expand(h, w)
    v = torch.arange(h, dtype=torch.float64).add_(0.5).view(h, 1).expand(h, w)
    levels = torch.arange(256)
    shifts = 8 - torch.tensor(_POSTERIZE_BITS).view(-1, 1)
    kernel = torch.ones(c, 1, 3, 3, dtype=dtype)
    kernel[:, :, 1, 1] = 5
    interior = torch.zeros(1, 1, h, w, dtype=torch.bool)
    interior[..., 1:-1, 1:-1] = True
    float64 = torch.float64
    affine = affine.to(device)
    basis = torch.stack([u, v, torch.ones(h, w, dtype=float64)]).view(1, 1, 3, h * w).to(device)
    last = torch.tensor([w - 1, h - 1], dtype=float64, device=device).view(1, 2, 1, 1)
    stride = torch.tensor([1, w], dtype=float64, device=device).view(1, 2, 1, 1)
    maps = None
    if len(affine) * h * w * 8 <= AFFINE_MAPS_MAX_BYTES:
        # made on the device, by the very operators that would make them per image
        maps = torch.cat([_affine_maps(part, basis, last, stride) for part in affine.split(10)])
    return _StrongTables(
        affine=affine, affine_maps=maps, basis=basis, last=last, stride=stride,
        fill_pixel=torch.tensor(fill, dtype=dtype, device=device).view(1, 1, 1),
        enhance=torch.tensor(_ENHANCE, dtype=dtype, device=device),
        posterize=(((levels >> shifts) << shifts).to(dtype) / 255).to(device),
        solarize=torch.tensor(_SOLARIZE, device=device),
        gray=(torch.tensor(_GRAY_WEIGHTS, dtype=dtype, device=device).view(1, 3, 1, 1)
              if c == 3 else None),
        smooth=(kernel / 13).to(device),
        interior=interior.to(device),
        identity=levels.view(1, 256).to(device),
        ones=torch.ones(1, h * w, dtype=torch.long, device=device),
        lines_yx=torch.arange(max(h, w), dtype=torch.float32).repeat(1, 2, 1).to(device),
        zero=const(0), one=const(1), half=const(0.5, torch.float32), level=const(255),
        area=const(h * w), fill=const(fill),
        hw=torch.tensor([h, w], dtype=torch.float32, device=device),
        half_side=const(side / 2, torch.float32), side=const(side, torch.float32),
        long_zero=const(0, torch.long), long_one=const(1, torch.long),
        long_two=const(2, torch.long), long_level=const(255, torch.long),
        long_area=const(h * w, torch.long),
    )


# ----------------------------------------------------------------------------- strong: host plan


@dataclass
class _Round:
    """One RandAugment round as the host laid it out: family sizes and upload slots."""

    sizes: list[int]  # rows of: affine, autocontrast, blends, level ops, untouched
    blend_counts: list[int]  # Brightness, Color, Contrast, Sharpness
    level_sizes: list[int]  # Posterize, Equalize, Solarize
    gather: int | None  # rows of the current batch in this round's order (None: unchanged)
    blend: int | None  # magnitudes of the blend rows
    solo: list[int]
    """Sharpness rows (grey images only; counted from the first Sharpness row) to filter alone:
    the only Sharpness image of its view in this round. The convolution of a single grey image
    can round differently (by one float ulp) from a batched one, and from itself with padding
    (oneDNN picks another kernel on some CPUs, e.g. with AVX-512); the previous implementation
    filtered each view's Sharpness images as one batch, without padding, so these rows are
    filtered that way, alone, which keeps the views bit-identical to it."""
    posterize: int | None  # magnitude of each (Posterize or Equalize row, channel)
    solarize: int | None  # magnitude of each (level row, channel); 0 (threshold 256) if not Solarize


class _StrongPlan:
    """Which rows every round reads, in which order, with which parameters: all from the host
    plan, in numpy, registered with one :class:`_Upload` (no device value is ever read back).

    In each round images are sorted (stably) by op family, so every family is one contiguous
    slice; the batch stays in that order for the next round, whose gather indices are composed
    with it, and one final gather restores natural order."""

    def __init__(self, ops: np.ndarray, mags: np.ndarray, apply: np.ndarray, channels: int,
                 upload: _Upload, views: Sequence[int] | None = None) -> None:
        """``views``: the sizes of the views whose rows ``ops`` holds, in order (default: one)."""
        n, n_ops = ops.shape
        view_of = np.repeat(np.arange(len(views or [n])), views or [n])
        family = _FAMILY[ops]
        if channels == 1:  # Color is the identity on grey images
            family = np.where(ops == _OP["Color"], _F_UNTOUCHED, family)
        family = np.where(apply, family, _F_UNTOUCHED)
        self.rounds: list[_Round] = []
        affine_rows = []  # (image, round) of each geometric op, round by round in round order
        position = np.arange(n)  # row of image i in the current batch
        for r in range(n_ops):
            order = np.argsort(family[:, r], kind="stable")
            count = np.bincount(family[:, r], minlength=_F_UNTOUCHED + 1)
            start = np.concatenate([[0], np.cumsum(count)])
            mag = mags[order, r]
            gather = position[order]
            unchanged = count[_F_UNTOUCHED] == n and np.array_equal(gather, np.arange(n))
            blends = slice(start[_F_BRIGHTNESS], start[_F_POSTERIZE])

            def slot(rows: slice, values: np.ndarray) -> int | None:
                return upload.add(values) if rows.stop > rows.start else None

            levels = slice(start[_F_POSTERIZE], start[_F_UNTOUCHED])
            sharp = order[start[_F_SHARPNESS]:start[_F_POSTERIZE]]
            alone = np.bincount(view_of[sharp], minlength=view_of[-1] + 1)[view_of[sharp]] == 1
            solo = np.flatnonzero(alone).tolist() if channels == 1 else []
            self.rounds.append(_Round(
                sizes=[int(v) for v in (count[_F_AFFINE], count[_F_AUTOCONTRAST],
                                        blends.stop - blends.start,
                                        count[_F_POSTERIZE:_F_SOLARIZE + 1].sum(),
                                        count[_F_UNTOUCHED])],
                blend_counts=[int(count[f]) for f in range(_F_BRIGHTNESS, _F_SHARPNESS + 1)],
                level_sizes=[int(count[f]) for f in (_F_POSTERIZE, _F_EQUALIZE, _F_SOLARIZE)],
                gather=None if unchanged else upload.add(gather),
                blend=slot(blends, mag[blends]),
                solo=solo,
                posterize=slot(slice(start[_F_POSTERIZE], start[_F_EQUALIZE]),
                               np.repeat(mag[start[_F_POSTERIZE]:start[_F_SOLARIZE]], channels)),
                solarize=slot(slice(start[_F_SOLARIZE], start[_F_UNTOUCHED]), np.repeat(np.where(
                    family[order[levels], r] == _F_SOLARIZE, mag[levels], 0), channels)),  # 256
            ))
            affine_rows.append(order[: count[_F_AFFINE]] * n_ops + r)
            position = np.empty(n, dtype=np.int64)
            position[order] = np.arange(n)
        self.affine_sizes = [len(rows) for rows in affine_rows]  # per round
        self.affine: tuple[int, int] | None = None
        """Upload slots: sign positions and affine-table rows (sign aside) of the geometric ops
        of all rounds, in round order."""
        if sum(self.affine_sizes):
            rows = np.concatenate(affine_rows)
            base = (_GEOMETRIC_KIND[ops] * PARAMETER_MAX + mags).reshape(-1)[rows] * 2
            self.affine = (upload.add(rows), upload.add(base))
        self.final = None if np.array_equal(position, np.arange(n)) else upload.add(position)
        """Row of image ``i`` in the last round's batch (None: already natural order)."""


# ----------------------------------------------------------------------------- strong: ops
# Each family reads its contiguous slice (g, C, H, W) of the round's batch (a fresh tensor) and
# writes its result back into that slice with its last operator (``out=``): no concatenation.


def _affine_maps(coefficients: Tensor, basis: Tensor, last: Tensor, stride: Tensor) -> Tensor:
    """``(g, h w)`` int64: the flat source pixel of each output pixel (``h w``, one past the
    last pixel, where it falls outside the image), for the PIL maps ``coefficients`` (g, 6)
    ``(a, b, c, d, e, f)`` (see :func:`_pixel_affine`): output pixel centre ``(u, v)`` reads the
    input pixel containing ``(a u + b v + c, d u + e v + f)``, i.e. the source index is
    ``floor`` of the mapped centre, the rule PIL uses (``grid_sample`` rounds half to even
    instead). ``basis``, ``last`` and ``stride`` are :class:`_StrongTables`' (this runs while
    they are made)."""
    g = len(coefficients)
    # (g, 2, 3, h w) products summed over the 3 terms: (a u + b v) + c, in that order
    source = (coefficients.view(g, 2, 3, 1) * basis).sum(2, keepdim=True).floor_()
    # source: (g, 2, 1, h w), the (x, y) pixel each output pixel reads
    # inside the image: 0 <= x <= w - 1 and 0 <= y <= h - 1 (integers, so exact)
    inside = torch.minimum(source, last - source).amin(1, keepdim=True) >= 0
    flat = torch.where(inside, (source * stride).sum(1, keepdim=True), basis.shape[-1])
    index = torch.empty(flat.shape, dtype=torch.long, device=flat.device).copy_(flat)
    return index.view(g, -1)


def _affine(x: Tensor, index: Tensor, t: _StrongTables) -> None:
    """Rotate/ShearX/ShearY/TranslateX/TranslateY as one nearest-neighbour resampling: each
    image reads its source pixels (``index``: its rows of :func:`_affine_maps`) with one gather
    from its pixels followed by a fill pixel, which the pixels mapped outside the image read.

    Not bit-exact with PIL: PIL walks each row by adding the matrix step to a running coordinate,
    while this evaluates ``a u + b v + c`` directly, so when a mapped centre lands exactly on a
    pixel edge the two round to neighbouring pixels. For most magnitudes no pixel is affected;
    at v=4 (shear 0.12, rotation 12 degrees) about 3% (shear) and 0.1% (rotate) of the pixels
    read a source one pixel over. The tests check exact agreement at v = 1, 5, 9 and at most a
    1-pixel offset at every magnitude."""
    g, c, h, w = x.shape
    x = x.view(g, c, h * w)
    source = torch.cat([x, t.fill_pixel.expand(g, c, 1)], 2)
    torch.gather(source, 2, index.view(g, 1, h * w).expand(g, c, h * w), out=x)


def _autocontrast(x: Tensor, t: _StrongTables) -> None:
    """Stretch each channel to ``[0, 1]``; constant channels are left alone (as PIL does)."""
    g, c, h, w = x.shape
    x = x.view(g, c, h * w)
    lo, hi = x.aminmax(dim=2, keepdim=True)
    spread = hi > lo
    scale = torch.where(spread, (hi - lo).clamp_min_(1e-12).reciprocal_(), t.one)
    torch.clamp((x - torch.where(spread, lo, t.zero)) * scale, t.zero, t.one, out=x)


def _blends(x: Tensor, rnd: _Round, parts: list[Tensor], t: _StrongTables) -> None:
    """PIL ``ImageEnhance`` for Brightness, Color, Contrast and Sharpness rows (in that order),
    as one blend ``degenerate + factor * (x - degenerate)``, clipped, against a per-row
    degenerate image, each family's made on its own rows only (contiguous): black; grey; the
    mean grey level rounded to a uint8 level like PIL; PIL's SMOOTH filter (3x3, centre 5,
    / 13), which leaves the border pixels."""
    g, c, h, w = x.shape
    n_brightness, n_color, n_contrast, n_sharpness = rnd.blend_counts
    if n_brightness == g:
        base = t.zero  # black
    else:
        base = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        black, grey_base, level_base, smooth = base.split(rnd.blend_counts)
        _, tinted, sharp = x.split([n_brightness, n_color + n_contrast, n_sharpness])
        if n_brightness:
            black.fill_(0)
        if n_color or n_contrast:
            grey = (tinted * t.gray).sum(1, keepdim=True) if t.gray is not None else tinted
            grey_color, grey_contrast = grey.split([n_color, n_contrast])
            if n_color:
                grey_base.copy_(grey_color)
            if n_contrast:
                mean = grey_contrast.sum((1, 2, 3), keepdim=True) / t.area  # what mean() does
                level_base.copy_((mean * t.level + t.half).floor_() / t.level)
        if len(rnd.solo) < n_sharpness:
            torch.where(t.interior, F.conv2d(sharp, t.smooth, padding=1, groups=c), sharp,
                        out=smooth)
        for i in rnd.solo:  # see _Round.solo: filtered as the previous implementation did
            one = sharp[i:i + 1]
            smooth[i:i + 1].copy_(one)
            smooth[i:i + 1, :, 1:-1, 1:-1] = F.conv2d(one, t.smooth)
    factor = t.enhance.index_select(0, parts[rnd.blend]).view(g, 1, 1, 1)
    torch.clamp(base + factor * (x - base), t.zero, t.one, out=x)


def _level_ops(x: Tensor, rnd: _Round, parts: list[Tensor], t: _StrongTables) -> None:
    """Posterize, Equalize and Solarize rows (in that order) on their uint8 levels: Solarize
    (``1 - x`` at and above the threshold, on the float values) as one ``where`` over all rows
    (threshold 256, i.e. no change, on the others), then Posterize and Equalize rows as one
    per-(image, channel) lookup-table gather."""
    g, c, h, w = x.shape
    n_posterize, n_equalize, n_solarize = rnd.level_sizes
    planes = x.view(g * c, h * w)
    rounded = (planes * t.level).round_().clamp_(t.zero, t.level)
    levels = torch.empty(planes.shape, dtype=torch.long, device=x.device).copy_(rounded)
    if n_solarize:
        threshold = t.solarize.index_select(0, parts[rnd.solarize]).view(g * c, 1)
        torch.where(levels >= threshold, t.one - planes, planes, out=planes)
    tabled = (n_posterize + n_equalize) * c
    if not tabled:
        return
    lv = levels[:tabled] if n_solarize else levels
    if n_posterize:  # Posterize rows' tables, then placeholders that Equalize overwrites
        table = t.posterize[parts[rnd.posterize]]
    else:
        table = torch.empty(tabled, 256, dtype=x.dtype, device=x.device)
    if n_equalize:
        if n_posterize:
            _equalize_table(lv[n_posterize * c:], t, out=table[n_posterize * c:])
        else:
            _equalize_table(lv, t, out=table)
    torch.gather(table, 1, lv, out=planes[:tabled] if n_solarize else planes)


def _equalize_table(levels: Tensor, t: _StrongTables, out: Tensor) -> None:
    """PIL's per-channel histogram equalisation table, exactly, for ``levels`` (planes, h w):
    all histograms from one ``scatter_add_`` (integer counts, the same on every device and in
    any order), written to ``out`` as float levels / 255."""
    planes, area = levels.shape
    hist = torch.zeros(planes, 256, dtype=torch.long, device=levels.device)
    hist.scatter_add_(1, levels, t.ones.expand(planes, area))
    top_count = hist.gather(1, levels.amax(1, keepdim=True))  # count of the highest level used
    step = torch.div(t.long_area - top_count, t.long_level, rounding_mode="floor")
    start = torch.div(step, t.long_two, rounding_mode="floor") + hist.cumsum(1) - hist
    lut = torch.div(start, step.clamp_min(t.long_one), rounding_mode="floor")
    lut = torch.where(step > t.long_zero, lut.clamp_max(t.long_level), t.identity)
    out.copy_(lut).div_(t.level)


def _cutout_mask(centres: Tensor, t: _StrongTables) -> Tensor:
    """``(n, 1, h, w)``: kekmodel's ``CutoutAbs`` square of each image, ``v = side`` pixels.

    ``centres`` (rows ``(y, x)`` in ``[0, 1)``) are kekmodel's uniform draws over the image. The
    corner is ``int(max(0, centre * size - v / 2))`` and kekmodel paints a PIL rectangle from the
    corner to ``min(size, corner + v)`` with *both* ends included, so an unclipped square is
    ``(v + 1) x (v + 1)`` pixels (17 x 17 = 289 at 32 px, fraction 0.5); at the far border the
    square stops at the last row/column, at the near border it starts at 0 and keeps ``v + 1``.
    (kekmodel hard-codes ``v = int(32 * 0.5)``; here ``v`` scales with the image size.)"""
    n, (h, w) = len(centres), t.interior.shape[2:]
    corner = (centres * t.hw - t.half_side).clamp_min_(0).floor_()  # >= 0: floor is int()
    offset = t.lines_yx - corner.view(n, 2, 1)  # (n, 2, L): row/col number minus the corner's
    # 0 <= offset <= side on both axes (small integers, so exact)
    ok = torch.minimum(offset, t.side - offset) >= t.zero  # (n, 2, L), contiguous
    lines = ok.shape[2]  # rows ok[i, 0, y] and columns ok[i, 1, x] as (n, 1, h, w) views
    rows = ok.as_strided((n, 1, h, w), (2 * lines, 1, 1, 0))
    return torch.bitwise_and(rows, ok.as_strided((n, 1, h, w), (2 * lines, 1, 0, 1), lines))


def _cutout(x: Tensor, centres: Tensor, fraction: float, fill: float) -> Tensor:
    """Cutout alone (``side = int(fraction * min(H, W))``), see :func:`_cutout_mask`."""
    n, c, h, w = x.shape
    side = int(fraction * min(h, w))
    if side <= 0:
        return x
    t = _strong_tables(x.device, x.dtype, c, h, w, fill, side)
    mask = _cutout_mask(to_device(centres, x.device), t)
    return torch.where(mask, t.fill, x)


def _strong_apply(x: Tensor, plan: _StrongPlan, parts: list[Tensor], signs: Tensor,
                  centres: Tensor, cutout_fraction: float, fill: float,
                  out: Tensor | None = None) -> Tensor:
    """Run the rounds of ``plan`` on ``x`` (natural order), then Cutout, into ``out`` (which may
    be ``x`` itself) or new images."""
    n, c, h, w = x.shape
    side = int(cutout_fraction * min(h, w))
    t = _strong_tables(x.device, x.dtype, c, h, w, fill, max(side, 0))
    maps: list[Tensor] = []
    if plan.affine is not None:  # the maps of all geometric ops; the sign is a device draw
        positions, base = (parts[i] for i in plan.affine)
        negative = to_device(signs, x.device).view(-1).index_select(0, positions) < t.half
        rows = base + negative
        if t.affine_maps is not None:
            maps = list(t.affine_maps[rows].split(plan.affine_sizes))
        else:
            maps = list(_affine_maps(t.affine[rows], t.basis, t.last, t.stride).split(
                plan.affine_sizes))
    current = x
    for r, rnd in enumerate(plan.rounds):
        if rnd.gather is None:
            continue
        current = current.index_select(0, parts[rnd.gather])  # fresh: the families overwrite it
        affine, autocontrast, blends, levels, _ = current.split(rnd.sizes)
        if len(affine):
            _affine(affine, maps[r], t)
        if len(autocontrast):
            _autocontrast(autocontrast, t)
        if rnd.blend is not None:
            _blends(blends, rnd, parts, t)
        if len(levels):
            _level_ops(levels, rnd, parts, t)
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
    mask = _cutout_mask(to_device(centres, x.device), t)
    return torch.where(mask, t.fill, current, out=current)


def _apply_op(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """Apply op ``op[i]`` with magnitude ``mag[i]`` and sign ``sign[i]`` to image ``i``: one
    RandAugment round of the training path with every op applied, and no Cutout."""
    n = x.shape[0]
    upload = _Upload()
    plan = _StrongPlan(op.cpu().numpy().reshape(n, 1), mag.cpu().numpy().reshape(n, 1),
                       np.ones((n, 1), dtype=bool), x.shape[1], upload)
    signs = torch.where(sign < 0, 0.25, 0.75).float().view(n, 1)
    return _strong_apply(x, plan, upload.send(x.device), signs, torch.zeros(n, 2), 0.0, fill)


def strong_augment(x: Tensor, generator: torch.Generator, n_ops: int = 2, prob: float = 0.5,
                   cutout_fraction: float = 0.5, fill: float = 127 / 255,
                   plan_generator: torch.Generator | None = None) -> Tensor:
    """RandAugmentMC (``n_ops`` rounds, each op applied with ``prob``) followed by Cutout.

    ``fill`` (grey) is what Cutout paints and what geometric ops bring in from outside the image.
    All random numbers are drawn up front, so the result depends only on the generator state.

    ``plan_generator`` (a CPU generator) samples the per-image op plan on the host: laying the
    batch out by op then needs no device-to-host copy, so a CUDA step never waits for the GPU
    here. Without it the plan comes from ``generator`` (one small sync on CUDA)."""
    _check(x)
    n, c = x.shape[:2]
    draws = _Draws([n], [True], generator, plan_generator, False, None, n_ops, prob)
    if n == 0:
        return x.clone(memory_format=torch.contiguous_format)
    upload = _Upload()
    plan = _StrongPlan(draws.ops, draws.magnitudes, draws.apply, c, upload)
    return _strong_apply(x, plan, upload.send(x.device), draws.signs, draws.centres,
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
    the store by the weak view's gather.

    The random numbers are the very draws of calling :func:`weak_augment` then (strong views)
    :func:`strong_augment` view by view, in the same order, so the views are that loop's; the
    work is batched across views: one host-to-device copy of everything the host planned, one
    gather for every weak view, one set of RandAugment rounds for all strong rows."""
    c, h, w = images.shape[1:]
    if c not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {tuple(images.shape)}")
    strong = [view.endswith("s") for view in views]
    if sorted(strong) != strong:
        raise ValueError(f"strong views must come last (natural order), got {tuple(views)}")
    rows = [np.asarray(labeled_rows if view.startswith("l") else unlabeled_rows)
            for view in views]
    pad = _pad(h, pad_fraction)
    draws = _Draws([len(r) for r in rows], strong, generator, plan_generator, hflip, pad, n_ops,
                   prob)
    upload = _Upload()
    sources = upload.add(np.concatenate(rows))
    n_strong = len(draws.ops)
    strong_sizes = [len(r) for r, s in zip(rows, strong, strict=True) if s]
    plan = (_StrongPlan(draws.ops, draws.magnitudes, draws.apply, c, upload, strong_sizes)
            if n_strong else None)
    parts = upload.send(images.device)
    t = _weak_tables(images.device, h, w, pad)
    flip = None if draws.flip is None else to_device(draws.flip, images.device)
    pixels = _weak_pixels(flip, to_device(draws.offsets, images.device), t)
    total = len(pixels)
    # the step's images (index_select: a row copy, faster on the CPU), then their pixels
    rows = images.index_select(0, parts[sources]).view(total, c, h * w)
    weak = rows.gather(2, pixels.expand(total, c, h * w)).view(total, c, h, w)
    if not weak.is_floating_point():
        weak = torch.div(weak, t.level)  # float32(level) / 255 in float32, one pass
    if plan is None:
        return weak
    strong_rows = weak[total - n_strong:]  # augmented in place
    _strong_apply(strong_rows, plan, parts, draws.signs, draws.centres, cutout_fraction, fill,
                  out=strong_rows)
    return weak


# ----------------------------------------------------------------------------- per-image (PIL)

PilOp = Callable[[Image.Image, int, int, int], Image.Image]


def _pil_affine(img: Image.Image, coeffs: tuple[float, ...], fill: int) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, fillcolor=_pil_fill(img, fill))


def _pil_fill(img: Image.Image, fill: int) -> int | tuple[int, ...]:
    return fill if img.mode == "L" else (fill,) * len(img.getbands())


def _enhance(kind: type[ImageEnhance._Enhance]) -> PilOp:
    return lambda img, v, s, fill: kind(img).enhance(_ENHANCE[v])


_PIL_OPS: dict[str, PilOp] = {  # (img, magnitude, sign +-1, fill level) -> img
    "AutoContrast": lambda img, v, s, fill: ImageOps.autocontrast(img),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Equalize": lambda img, v, s, fill: ImageOps.equalize(img),
    "Identity": lambda img, v, s, fill: img,
    "Posterize": lambda img, v, s, fill: ImageOps.posterize(img, _POSTERIZE_BITS[v]),
    "Rotate": lambda img, v, s, fill: img.rotate(s * _ROTATE_DEG[v],
                                                 fillcolor=_pil_fill(img, fill)),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, v, s, fill: _pil_affine(img, (1, s * _SHEAR[v], 0, 0, 1, 0), fill),
    "ShearY": lambda img, v, s, fill: _pil_affine(img, (1, 0, 0, s * _SHEAR[v], 1, 0), fill),
    "Solarize": lambda img, v, s, fill: ImageOps.solarize(img, _SOLARIZE[v]),
    "TranslateX": lambda img, v, s, fill: _pil_affine(
        img, (1, 0, int(s * _TRANSLATE[v] * img.size[0]), 0, 1, 0), fill),
    "TranslateY": lambda img, v, s, fill: _pil_affine(
        img, (1, 0, 0, 0, 1, int(s * _TRANSLATE[v] * img.size[1])), fill),
}


def _to_pil(img: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(img, Image.Image):
        return img
    return Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img)


def _like(result: Image.Image, original: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
    if isinstance(original, Image.Image):
        return result
    return np.asarray(result).reshape(original.shape)


def sample_plan_per_image(rng: random.Random, n_ops: int = 2,
                          prob: float = 0.5) -> list[tuple[int, int, bool]]:
    """kekmodel's RandAugmentMC choices for one image: ``(op id, magnitude 1..9, apply)``."""
    ops = [rng.randrange(len(OP_NAMES)) for _ in range(n_ops)]
    return [(op, rng.randint(1, PARAMETER_MAX - 1), rng.random() < prob) for op in ops]


def strong_augment_per_image(img: Image.Image | np.ndarray, rng: random.Random, n_ops: int = 2,
                             prob: float = 0.5, cutout_fraction: float = 0.5,
                             fill: int = 127) -> Image.Image | np.ndarray:
    """The reference RandAugmentMC + Cutout on one PIL image or uint8 ``(H, W[, C])`` array."""
    out = _to_pil(img)
    for op, v, apply in sample_plan_per_image(rng, n_ops, prob):
        if apply:
            sign = -1 if op in _SIGNED and rng.random() < 0.5 else 1
            out = _PIL_OPS[OP_NAMES[op]](out, v, sign, fill)
    w, h = out.size
    side = int(cutout_fraction * min(h, w))
    if side > 0:  # kekmodel's CutoutAbs: x drawn first, PIL rectangle with both ends included
        x0 = int(max(0.0, rng.uniform(0, w) - side / 2))
        y0 = int(max(0.0, rng.uniform(0, h) - side / 2))
        out = out.copy()
        ImageDraw.Draw(out).rectangle(
            (x0, y0, int(min(w, x0 + side)), int(min(h, y0 + side))), _pil_fill(out, fill))
    return _like(out, img)


def weak_augment_per_image(img: Image.Image | np.ndarray, rng: random.Random, hflip: bool = True,
                           pad_fraction: float = 0.125) -> Image.Image | np.ndarray:
    """The reference flip + reflect-pad + random crop on one image."""
    array = np.asarray(_to_pil(img))
    h, w = array.shape[:2]
    if hflip and rng.random() < 0.5:
        array = array[:, ::-1]
    pad = max(1, int(pad_fraction * h))
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (array.ndim - 2)
    padded = np.pad(array, widths, mode="reflect")
    top, left = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    crop = np.ascontiguousarray(padded[top : top + h, left : left + w])
    return _like(Image.fromarray(crop), img)
