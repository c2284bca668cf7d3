"""The batched augmentation as it was before the op-count rewrite (issue #12), kept verbatim as
the reference that ``tests/test_augment_equivalence.py`` compares the new path with.

Only the constants and tables are imported from :mod:`interlude.data.augment` (they did not
change); every function below is the old code, so the comparison cannot drift with the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from interlude.data.augment import (
    _ENHANCE,
    _GEOMETRIC,
    _GRAY_WEIGHTS,
    _OP,
    _POSTERIZE_BITS,
    _ROTATE_DEG,
    _SHEAR,
    _SOLARIZE,
    _TRANSLATE,
    OP_NAMES,
    PARAMETER_MAX,
    to_device,
)


def _check(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        raise ValueError(f"expected float (N, C in {{1, 3}}, H, W) images, got {x.dtype} "
                         f"{tuple(x.shape)}")


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


# ----------------------------------------------------------------------------- weak


def _reflect(index: Tensor, size: int) -> Tensor:
    """Map indices in ``[-size + 1, 2 size - 2]`` into the image as reflect padding does."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def _gather_pixels(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``out[i, :, y, x] = x[i, :, rows[i, y, x], cols[i, y, x]]`` as one flat gather."""
    n, c, h, w = x.shape
    flat = rows * w + cols
    index = flat.reshape(n, 1, -1).expand(n, c, -1)
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, *flat.shape[1:])


def weak_augment(x: Tensor, generator: torch.Generator, hflip: bool,
                 pad_fraction: float = 0.125) -> Tensor:
    """Random horizontal flip (p=0.5) then reflect-pad and random crop back to ``H x W``.

    Padding is never materialised: each output pixel's reflected source index is computed and
    read with a single gather (flip folded into the column index), ~4x cheaper than ``F.pad``.
    """
    _check(x)
    n, _, h, w = x.shape
    pad = max(1, int(pad_fraction * h))
    flip = _rand(generator, n) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool,
                                                                 device=x.device)
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=generator.device)
    offsets = offsets.to(x.device) - pad
    rows = _reflect(offsets[:, :1] + torch.arange(h, device=x.device), h)  # (n, h)
    cols = _reflect(offsets[:, 1:] + torch.arange(w, device=x.device), w)  # (n, w)
    cols = torch.where(flip.to(x.device)[:, None], w - 1 - cols, cols)
    return _gather_pixels(x, rows[:, :, None], cols[:, None, :])


# ----------------------------------------------------------------------------- strong: plan


def sample_strong_plan(n: int, generator: torch.Generator, n_ops: int = 2,
                       prob: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """RandAugmentMC's choices for ``n`` images: op ids, magnitudes in 1..9, and apply flags."""
    device = generator.device
    ops = torch.randint(0, len(OP_NAMES), (n, n_ops), generator=generator, device=device)
    magnitudes = torch.randint(1, PARAMETER_MAX, (n, n_ops), generator=generator, device=device)
    apply = _rand(generator, n, n_ops) < prob
    return ops, magnitudes, apply


# ----------------------------------------------------------------------------- strong: ops
# Every op maps a group (g, C, H, W) plus per-image op ids, magnitudes and signs to new images.

OpFn = Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]


def _lookup(table: Sequence[float], index: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.tensor(table, dtype=dtype, device=index.device)[index]


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _levels(x: Tensor) -> Tensor:
    """The uint8 level of each pixel (as int64), the domain PIL's lookup-table ops work in."""
    return (x * 255).round_().clamp_(0, 255).long()


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _blend(degenerate: Tensor, x: Tensor, mag: Tensor) -> Tensor:
    """PIL ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``, clipped."""
    factor = _per_image(_lookup(_ENHANCE, mag, x.dtype))
    return (degenerate + factor * (x - degenerate)).clamp_(0, 1)


def _identity(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    return x


def _autocontrast(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """Stretch each channel to ``[0, 1]``; constant channels are left alone (as PIL does)."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    spread = hi > lo
    scale = torch.where(spread, 1 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    return ((x - torch.where(spread, lo, torch.zeros_like(lo))) * scale).clamp_(0, 1)


def _brightness(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    return _blend(torch.zeros_like(x), x, mag)


def _color(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    return x if x.shape[1] == 1 else _blend(_gray(x).expand_as(x), x, mag)


def _contrast(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """Blend with the image's mean grey level, rounded to a uint8 level like PIL."""
    mean = (_gray(x).mean((1, 2, 3), keepdim=True) * 255 + 0.5).floor_() / 255
    return _blend(mean.expand_as(x), x, mag)


def _sharpness(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, /13), which leaves the border pixels."""
    c = x.shape[1]
    kernel = torch.ones(c, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel / 13, groups=c)
    return _blend(degenerate, x, mag)


def _equalize(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """PIL's per-channel histogram equalisation, exactly; all histograms from one ``bincount``
    (integer counts, so the same on every device and in any order)."""
    n, c, h, w = x.shape
    levels = _levels(x).view(n * c, h * w)
    planes = torch.arange(n * c, device=x.device).view(-1, 1) * 256
    hist = torch.bincount((levels + planes).view(-1), minlength=n * c * 256).view(n * c, 256)
    top_count = hist.gather(1, levels.amax(1, keepdim=True))  # count of the highest level used
    step = (h * w - top_count) // 255
    lut = (step // 2 + hist.cumsum(1) - hist) // step.clamp_min(1)
    identity = torch.arange(256, device=x.device).expand_as(lut)
    lut = torch.where(step > 0, lut.clamp_max(255), identity)
    return (lut.gather(1, levels).to(x.dtype) / 255).view_as(x)


def _posterize(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    shift = _per_image(8 - _lookup(_POSTERIZE_BITS, mag, torch.long))
    return ((_levels(x) >> shift) << shift).to(x.dtype) / 255


def _solarize(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    threshold = _per_image(_lookup(_SOLARIZE, mag, torch.long))
    return torch.where(_levels(x) >= threshold, 1 - x, x)


def _pixel_affine(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor) -> list[Tensor]:
    """PIL-style inverse maps ``(a, b, c, d, e, f)``: output ``(u, v)`` reads input
    ``(a u + b v + c, d u + e v + f)`` in continuous pixel coordinates (pixel centres at +0.5).
    Rotation is about the image centre, shear about the top-left corner, as in PIL."""
    h, w = x.shape[-2:]
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


def _affine(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """Rotate/ShearX/ShearY/TranslateX/TranslateY as one nearest-neighbour resampling.

    Equivalent to ``affine_grid`` + nearest ``grid_sample`` with per-image matrices, but the source
    index is ``floor`` of the mapped pixel centre, the rule PIL uses (grid_sample rounds half to
    even), and one flat gather is about twice as fast on CPU. Outside pixels get ``fill``.

    Not bit-exact with PIL: PIL walks each row by adding the matrix step to a running coordinate,
    while this evaluates ``a u + b v + c`` directly, so when a mapped centre lands exactly on a
    pixel edge the two round to neighbouring pixels. For most magnitudes no pixel is affected;
    at v=4 (shear 0.12, rotation 12 degrees) about 3% (shear) and 0.1% (rotate) of the pixels
    read a source one pixel over. The tests check exact agreement at v = 1, 5, 9 and at most a
    1-pixel offset at every magnitude."""
    n, c, h, w = x.shape
    a, b, tx, d, e, ty = (t.view(n, 1, 1) for t in _pixel_affine(x, op, mag, sign))
    u = torch.arange(w, device=x.device, dtype=a.dtype).add_(0.5).view(1, 1, w)
    v = torch.arange(h, device=x.device, dtype=a.dtype).add_(0.5).view(1, h, 1)
    src_x = (a * u + b * v + tx).floor_().long()
    src_y = (d * u + e * v + ty).floor_().long()
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    # outside pixels read an extra "fill" pixel appended after the last one
    flat = torch.where(inside, src_y * w + src_x, h * w).view(n, 1, h * w).expand(n, c, h * w)
    source = torch.cat([x.reshape(n, c, h * w), x.new_full((n, c, 1), fill)], 2)
    return source.gather(2, flat).view(n, c, h, w)


_OPS: dict[int, OpFn] = {
    _OP["AutoContrast"]: _autocontrast, _OP["Brightness"]: _brightness, _OP["Color"]: _color,
    _OP["Contrast"]: _contrast, _OP["Equalize"]: _equalize, _OP["Identity"]: _identity,
    _OP["Posterize"]: _posterize, _OP["Sharpness"]: _sharpness, _OP["Solarize"]: _solarize,
    **{i: _affine for i in _GEOMETRIC},
}


def _apply_op(x: Tensor, op: Tensor, mag: Tensor, sign: Tensor, fill: float) -> Tensor:
    """Apply op ``op[i]`` to image ``i`` (all ops in one call must share a function)."""
    return _OPS[int(op[0])](x, op, mag, sign, fill)


def _apply_round(out: Tensor, op: Tensor, mag: Tensor, sign: Tensor, apply: Tensor,
                 fill: float) -> None:
    """One RandAugment round, in place: group images by op, one vectorised call per group.

    Grouping runs where the plan lives (``op``'s device): from a host plan it costs no device
    sync; from a device plan it costs one (the group sizes). The five geometric ops share a group
    since one affine resampling serves all of them."""
    key = torch.where(apply & (op != _OP["Identity"]), op, -1)
    geometric = torch.isin(key, torch.tensor(_GEOMETRIC, device=key.device))
    key = torch.where(geometric, _GEOMETRIC[0], key)
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key + 1, minlength=len(OP_NAMES) + 1).tolist()
    device = out.device
    for group_key, idx in zip(range(-1, len(OP_NAMES)), order.split(counts), strict=True):
        if group_key < 0 or idx.numel() == 0:
            continue
        at = to_device(idx, device)
        group = _OPS[group_key](out.index_select(0, at), to_device(op[idx], device),
                                to_device(mag[idx], device), sign[at], fill)
        out.index_copy_(0, at, group)


def _cutout(x: Tensor, centres: Tensor, fraction: float, fill: float) -> Tensor:
    """kekmodel's ``CutoutAbs`` with ``v = int(fraction * min(H, W))``, in place.

    ``centres`` (rows ``(y, x)`` in ``[0, 1)``) are kekmodel's uniform draws over the image. The
    corner is ``int(max(0, centre * size - v / 2))`` and kekmodel paints a PIL rectangle from the
    corner to ``min(size, corner + v)`` with *both* ends included, so an unclipped square is
    ``(v + 1) x (v + 1)`` pixels (17 x 17 = 289 at 32 px, fraction 0.5); at the far border the
    square stops at the last row/column, at the near border it starts at 0 and keeps ``v + 1``.
    (kekmodel hard-codes ``v = int(32 * 0.5)``; here ``v`` scales with the image size.)

    Only the squares' pixels are written (``index_fill_``), not the whole batch."""
    n, c, h, w = x.shape
    side = int(fraction * min(h, w))
    if side <= 0:
        return x
    start = (centres * torch.tensor([h, w], device=x.device) - side / 2).clamp_min_(0).long()
    steps = torch.arange(side + 1, device=x.device)  # PIL's rectangle includes both ends
    # clamping repeats the last in-image row/column, which lies inside the clipped square
    rows = (start[:, :1] + steps).clamp_max_(h - 1)
    cols = (start[:, 1:] + steps).clamp_max_(w - 1)
    planes = torch.arange(n * c, device=x.device).view(n, c, 1) * (h * w)
    flat = planes + (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, -1)
    x.view(-1).index_fill_(0, flat.view(-1), fill)
    return x


def strong_augment(x: Tensor, generator: torch.Generator, n_ops: int = 2, prob: float = 0.5,
                   cutout_fraction: float = 0.5, fill: float = 127 / 255,
                   plan_generator: torch.Generator | None = None) -> Tensor:
    """RandAugmentMC (``n_ops`` rounds, each op applied with ``prob``) followed by Cutout.

    ``fill`` (grey) is what Cutout paints and what geometric ops bring in from outside the image.
    All random numbers are drawn up front, so the result depends only on the generator state.

    ``plan_generator`` (a CPU generator) samples the per-image op plan on the host: grouping the
    batch by op then needs no device-to-host copy, so a CUDA step never waits for the GPU here.
    Without it the plan comes from ``generator`` (one small sync per round on CUDA)."""
    _check(x)
    n = x.shape[0]
    ops, magnitudes, apply = sample_strong_plan(n, plan_generator or generator, n_ops, prob)
    signs = to_device(torch.where(_rand(generator, n, n_ops) < 0.5, -1, 1), x.device)
    centres = to_device(_rand(generator, n, 2), x.device)
    out = x.clone(memory_format=torch.contiguous_format)
    if n == 0:
        return out
    for r in range(n_ops):
        _apply_round(out, ops[:, r], magnitudes[:, r], signs[:, r], apply[:, r], fill)
    return _cutout(out, centres, cutout_fraction, fill)


def old_pipeline_views(xl: Tensor, xu: Tensor | None, views: tuple[str, ...],
                       generator: torch.Generator, plan: torch.Generator,
                       hflip: bool) -> Tensor:
    """``BatchBuilder._augment_on_device``'s loop before the rewrite, minus normalisation."""
    parts = []
    for view in views:
        weak = weak_augment(xl if view.startswith("l") else xu, generator, hflip)
        strong = view.endswith("s")
        parts.append(strong_augment(weak, generator, plan_generator=plan) if strong else weak)
    return torch.cat(parts)
