"""The batched tensor ops: weak crop/flip pixel maps, each RandAugment op family on its
contiguous rows of a round's batch, and Cutout, with the constant tables they read.

Few operators per step (launch overhead): on a GPU every dispatched operator costs host time
whatever the batch size, so each family runs once per round on its slice and writes its result
back in place (``out=``): the five geometric ops as one gather through a table of the source pixel
maps of every (op, magnitude, sign), made once per image size; Brightness/Color/Contrast/
Sharpness as one blend against a per-image degenerate image made on each family's rows; Solarize
as one ``where``; Posterize/Equalize as one lookup-table gather. On a CPU the time goes to passes
over the batch, so each family works on its own rows only and nothing is computed per pixel that a
table made once can hold.

Agreement with the PIL path (:mod:`.pil`, bounded by ``tests/test_augment.py``): the magnitude
tables and the lookup-table ops (Equalize, Posterize, Solarize) match exactly, and Cutout paints the
same square for the same draw; the blends (Brightness, Color, Contrast, Sharpness) and AutoContrast
differ by at most one uint8 level (PIL rounds to uint8); the geometric ops use PIL's coordinate map
but can pick a source pixel one pixel away at exact ties (see :func:`resample`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .plan import (
    ENHANCE,
    GEOMETRIC,
    GRAY_WEIGHTS,
    OP,
    PARAMETER_MAX,
    POSTERIZE_BITS,
    ROTATE_DEG,
    SHEAR,
    SOLARIZE,
    TRANSLATE,
    Round,
    to_device,
)


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in ``[0, 1]``; float input is returned unchanged."""
    return x if x.is_floating_point() else x.to(torch.float32).div_(255)


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Per-channel ``(x - mean) / std``; ``mean``/``std`` may be sequences or tensors."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - mean_t) / std_t


def check_images(x: Tensor) -> None:
    """Reject what the tensor ops cannot take (a programming error, hence ``ValueError``)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        raise ValueError(f"expected float (N, C in {{1, 3}}, H, W) images, got {x.dtype} "
                         f"{tuple(x.shape)}")



# ----------------------------------------------------------------------------- weak


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map indices in ``[-size + 1, 2 size - 2]`` into the image as reflect padding does."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)




WEAK_MAPS_MAX_BYTES = 32 << 20
"""Largest table of whole-image pixel maps :func:`weak_pixels` keeps (32 px: 1.3 MB)."""


@dataclass(frozen=True)
class WeakTables:
    """Source pixel of every output row/column for each crop offset (and flip), made once."""

    rows: Tensor  # (2 pad + 1, h): source row * w for vertical offset o
    cols: Tensor  # (2 (2 pad + 1), w): source column for flip * (2 pad + 1) + horizontal offset
    maps: Tensor | None  # (rows x cols keys, h w): whole-image maps, when small enough
    key: Tensor  # (1, 2): key of (vertical, horizontal) offset in ``maps``
    half: Tensor  # 0.5, the flip threshold
    level: Tensor  # 255.0
    span: Tensor  # 2 pad + 1 (int64): key offset of the flipped columns


@functools.lru_cache(maxsize=16)
def weak_tables(device: torch.device, h: int, w: int, pad: int) -> WeakTables:
    span = 2 * pad + 1
    offsets = torch.arange(-pad, pad + 1, device=device)[:, None]
    rows = _reflect(offsets + torch.arange(h, device=device), h) * w
    cols = _reflect(offsets + torch.arange(w, device=device), w)
    cols = torch.cat([cols, w - 1 - cols])
    maps = None
    if span * 2 * span * h * w * 8 <= WEAK_MAPS_MAX_BYTES:
        maps = (rows[:, None, :, None] + cols[None, :, None, :]).reshape(span * 2 * span, h * w)
    return WeakTables(
        rows=rows, cols=cols, maps=maps,
        key=torch.tensor([[2 * span, 1]], device=device),
        half=torch.tensor(0.5, device=device), level=torch.tensor(255.0, device=device),
        span=torch.tensor(span, device=device),
    )


def weak_pixels(flip: Tensor | None, offsets: Tensor, t: WeakTables) -> Tensor:
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



# ----------------------------------------------------------------------------- strong: tables


def _lookup(table: Sequence[float], index: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.tensor(table, dtype=dtype, device=index.device)[index]


def _pixel_affine(op: Tensor, mag: Tensor, sign: Tensor, h: int, w: int) -> list[Tensor]:
    """PIL-style inverse maps ``(a, b, c, d, e, f)``: output ``(u, v)`` reads input
    ``(a u + b v + c, d u + e v + f)`` in continuous pixel coordinates (pixel centres at +0.5).
    Rotation is about the image centre, shear about the top-left corner, as in PIL."""
    dtype = torch.float64  # PIL maps coordinates in double; floor() must see the same values
    sign = sign.to(dtype)
    is_rot = op == OP["Rotate"]
    angle = torch.where(is_rot, sign * _lookup(ROTATE_DEG, mag, dtype), 0)
    phi = -torch.deg2rad(angle)
    cos, sin = phi.cos(), phi.sin()
    shear = sign * _lookup(SHEAR, mag, dtype)
    zero = torch.zeros_like(shear)
    a, e = cos, cos
    b = sin + torch.where(op == OP["ShearX"], shear, zero)
    d = -sin + torch.where(op == OP["ShearY"], shear, zero)
    shift_x = sign * _lookup([int(t * w) for t in TRANSLATE], mag, dtype)
    shift_y = sign * _lookup([int(t * h) for t in TRANSLATE], mag, dtype)
    cx, cy = w / 2, h / 2
    c = torch.where(is_rot, cx - a * cx - b * cy, zero)
    c = c + torch.where(op == OP["TranslateX"], shift_x, zero)
    f = torch.where(is_rot, cy - d * cx - e * cy, zero)
    f = f + torch.where(op == OP["TranslateY"], shift_y, zero)
    return [a, b, c, d, e, f]


@dataclass(frozen=True)
class StrongTables:
    """Everything constant a strong view needs at one (device, dtype, C, H, W, fill, Cutout
    side), made once: per-magnitude tables, the affine map of every (geometric op, magnitude,
    sign) and its source pixels, pixel grids, and 0-dim constants (a Python number in an op
    costs extra operators)."""

    affine: Tensor  # (5 * 10 * 2, 6) float64, row (kind * 10 + magnitude) * 2 + (sign < 0)
    affine_maps: Tensor | None
    """(rows of ``affine``, h w) int64: each map's source pixels (:func:`affine_maps`), when
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
"""Largest table of geometric-op pixel maps :func:`strong_tables` keeps (32 px: 0.8 MB)."""


@functools.lru_cache(maxsize=16)
def strong_tables(device: torch.device, dtype: torch.dtype, c: int, h: int, w: int,
                   fill: float, side: int) -> StrongTables:
    def const(value, kind=dtype) -> Tensor:
        return torch.tensor(value, dtype=kind, device=device)

    kinds, mags, negative = (g.reshape(-1) for g in torch.meshgrid(
        torch.arange(len(GEOMETRIC)), torch.arange(PARAMETER_MAX), torch.arange(2),
        indexing="ij"))
    op = torch.tensor(GEOMETRIC)[kinds]
    affine = torch.stack(_pixel_affine(op, mags, torch.where(negative > 0, -1, 1), h, w), 1)
    u = torch.arange(w, dtype=torch.float64).add_(0.5).view(1, w).expand(h, w)
    v = torch.arange(h, dtype=torch.float64).add_(0.5).view(h, 1).expand(h, w)
    levels = torch.arange(256)
    shifts = 8 - torch.tensor(POSTERIZE_BITS).view(-1, 1)
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
        maps = torch.cat([affine_maps(part, basis, last, stride) for part in affine.split(10)])
    return StrongTables(
        affine=affine, affine_maps=maps, basis=basis, last=last, stride=stride,
        fill_pixel=torch.tensor(fill, dtype=dtype, device=device).view(1, 1, 1),
        enhance=torch.tensor(ENHANCE, dtype=dtype, device=device),
        posterize=(((levels >> shifts) << shifts).to(dtype) / 255).to(device),
        solarize=torch.tensor(SOLARIZE, device=device),
        gray=(torch.tensor(GRAY_WEIGHTS, dtype=dtype, device=device).view(1, 3, 1, 1)
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


# ----------------------------------------------------------------------------- strong: ops
# Each family reads its contiguous slice (g, C, H, W) of the round's batch (a fresh tensor) and
# writes its result back into that slice with its last operator (``out=``): no concatenation.


def affine_maps(coefficients: Tensor, basis: Tensor, last: Tensor, stride: Tensor) -> Tensor:
    """``(g, h w)`` int64: the flat source pixel of each output pixel (``h w``, one past the
    last pixel, where it falls outside the image), for the PIL maps ``coefficients`` (g, 6)
    ``(a, b, c, d, e, f)`` (see :func:`_pixel_affine`): output pixel centre ``(u, v)`` reads the
    input pixel containing ``(a u + b v + c, d u + e v + f)``, i.e. the source index is
    ``floor`` of the mapped centre, the rule PIL uses (``grid_sample`` rounds half to even
    instead). ``basis``, ``last`` and ``stride`` are :class:`StrongTables`' (this runs while
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


def resample(x: Tensor, index: Tensor, t: StrongTables) -> None:
    """Rotate/ShearX/ShearY/TranslateX/TranslateY as one nearest-neighbour resampling: each
    image reads its source pixels (``index``: its rows of :func:`affine_maps`) with one gather
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


def autocontrast(x: Tensor, t: StrongTables) -> None:
    """Stretch each channel to ``[0, 1]``; constant channels are left alone (as PIL does)."""
    g, c, h, w = x.shape
    x = x.view(g, c, h * w)
    lo, hi = x.aminmax(dim=2, keepdim=True)
    spread = hi > lo
    scale = torch.where(spread, (hi - lo).clamp_min_(1e-12).reciprocal_(), t.one)
    torch.clamp((x - torch.where(spread, lo, t.zero)) * scale, t.zero, t.one, out=x)


def blends(x: Tensor, rnd: Round, parts: list[Tensor], t: StrongTables) -> None:
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
        if n_sharpness:
            torch.where(t.interior, F.conv2d(sharp, t.smooth, padding=1, groups=c), sharp,
                        out=smooth)
    factor = t.enhance.index_select(0, parts[rnd.blend]).view(g, 1, 1, 1)
    torch.clamp(base + factor * (x - base), t.zero, t.one, out=x)


def level_ops(x: Tensor, rnd: Round, parts: list[Tensor], t: StrongTables) -> None:
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
            equalize_table(lv[n_posterize * c:], t, out=table[n_posterize * c:])
        else:
            equalize_table(lv, t, out=table)
    torch.gather(table, 1, lv, out=planes[:tabled] if n_solarize else planes)


def equalize_table(levels: Tensor, t: StrongTables, out: Tensor) -> None:
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


def cutout_mask(centres: Tensor, t: StrongTables) -> Tensor:
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


def cutout(x: Tensor, centres: Tensor, fraction: float, fill: float) -> Tensor:
    """Cutout alone (``side = int(fraction * min(H, W))``), see :func:`cutout_mask`."""
    n, c, h, w = x.shape
    side = int(fraction * min(h, w))
    if side <= 0:
        return x
    t = strong_tables(x.device, x.dtype, c, h, w, fill, side)
    mask = cutout_mask(to_device(centres, x.device), t)
    return torch.where(mask, t.fill, x)

