"""Weak and strong augmentation, batched on tensors (any device) and per image (PIL reference).

Semantics follow FixMatch (kekmodel's RandAugmentMC, used by the InterLUDE code):

- weak: random horizontal flip (optional), reflect-pad by 12.5 % and random crop back;
- strong: weak, then 2 ops drawn uniformly (with replacement) from a pool of 14, each with a
  magnitude v in 1..9 and applied with probability 0.5, then Cutout of half the image side filled
  with grey (127/255).

The batched path samples every image's plan at once and applies each op to the group of images
that drew it, so there is no Python loop over images. Images are float tensors in [0, 1],
``(N, C, H, W)`` with C in {1, 3}; all randomness comes from an explicit ``torch.Generator`` on the
same device, which makes a step's augmentation a pure function of (seed, step).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

OP_NAMES = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)
MAX_MAGNITUDE = 10  # v ~ randint(1, 10) -> 1..9, as in kekmodel's RandAugmentMC(n=2, m=10)
GREY = 127.0 / 255.0


# ---------------------------------------------------------------------------- helpers
def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``; mean/std are sequences or ``(1, C, 1, 1)`` tensors."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def _uniform(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def _sign(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.where(_uniform(n, generator, device) < 0.5, -1.0, 1.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's 'L' conversion); 1-channel images are their own grey."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance: ``degenerate + factor * (x - degenerate)``, clipped."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------- weak
def weak_augment(
    x: torch.Tensor, generator: torch.Generator, hflip: bool = True, pad_fraction: float = 0.125
) -> torch.Tensor:
    """Per-image random flip (if ``hflip``), reflect padding and random crop, vectorised."""
    n, _, h, w = x.shape
    if hflip:
        flip = _uniform(n, generator, x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    pad = max(1, int(pad_fraction * h))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offset_y = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    offset_x = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (offset_y[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (offset_x[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    width = w + 2 * pad
    flat = padded.flatten(2)  # (n, C, (h+2p)*(w+2p))
    index = (rows * width + cols).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    return flat.gather(2, index).view_as(x)


# ---------------------------------------------------------------------------- strong ops
def _scale(v: torch.Tensor, max_value: float) -> torch.Tensor:
    """kekmodel's _float_parameter: v * max / 10."""
    return v.float() * max_value / MAX_MAGNITUDE


def _auto_contrast(x, v, g):
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-8), x)


def _brightness(x, v, g):
    return _blend(torch.zeros_like(x), x, _scale(v, 0.9) + 0.05)


def _color(x, v, g):
    return x if x.shape[1] == 1 else _blend(_grey(x).expand_as(x), x, _scale(v, 0.9) + 0.05)


def _contrast(x, v, g):
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(x), x, _scale(v, 0.9) + 0.05)


def _equalize(x, v, g):
    """PIL ImageOps.equalize per channel: lut from the cumulative histogram."""
    n, c, h, w = x.shape
    levels = (x * 255.0).round().long().clamp_(0, 255).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float32)
    )
    idx = torch.arange(256, device=x.device).expand(n * c, -1)
    last_level = torch.where(hist > 0, idx, -1).amax(dim=1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, last_level), 255, rounding_mode="floor")
    before = hist.cumsum(1) - hist
    lut = torch.div(before + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1),
                    rounding_mode="floor").clamp_(0, 255)
    lut = torch.where(step > 0, lut, idx.float())
    return (lut.gather(1, levels) / 255.0).view(n, c, h, w)


def _identity(x, v, g):
    return x


def _posterize(x, v, g):
    """Keep the top 4..7 bits of each 8-bit value (float arithmetic: no integer tensors)."""
    keep = _scale(v, 4).floor() + 4
    step = torch.exp2(8 - keep).view(-1, 1, 1, 1)
    return torch.floor((x * 255.0).round_() / step) * step / 255.0


def _sharpness(x, v, g):
    """PIL's SMOOTH kernel (centre 5, others 1, /13) as the degenerate image, borders unchanged."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)  # 'valid': the interior only
    return _blend(degenerate, x, _scale(v, 0.9) + 0.05)


def _solarize(x, v, g):
    threshold = (256 - (v.float() * 256 / MAX_MAGNITUDE).floor()).view(-1, 1, 1, 1) / 255.0
    return torch.where(x >= threshold, 1.0 - x, x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample with per-image affine matrices (normalised coordinates), filling with black."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _theta(n: int, device) -> torch.Tensor:
    return torch.eye(2, 3, device=device).repeat(n, 1, 1)


def _rotate(x, v, g):
    angle = (_scale(v, 30).floor() * _sign(len(v), g, x.device)) * math.pi / 180.0
    theta = _theta(len(v), x.device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    return _affine(x, theta)


def _shear(axis: int):
    def op(x, v, g):
        theta = _theta(len(v), x.device)
        theta[:, axis, 1 - axis] = _scale(v, 0.3) * _sign(len(v), g, x.device)
        return _affine(x, theta)

    return op


def _translate(axis: int):
    def op(x, v, g):
        size = x.shape[3 - axis]
        pixels = (_scale(v, 0.3) * size).floor() * _sign(len(v), g, x.device)
        theta = _theta(len(v), x.device)
        theta[:, axis, 2] = 2.0 * pixels / size  # normalised coordinates span 2
        return _affine(x, theta)

    return op


_OPS = {
    "AutoContrast": _auto_contrast, "Brightness": _brightness, "Color": _color,
    "Contrast": _contrast, "Equalize": _equalize, "Identity": _identity,
    "Posterize": _posterize, "Rotate": _rotate, "Sharpness": _sharpness,
    "ShearX": _shear(0), "ShearY": _shear(1), "Solarize": _solarize,
    "TranslateX": _translate(0), "TranslateY": _translate(1),
}
OPS = tuple(_OPS[name] for name in OP_NAMES)


def sample_strong_plan(
    n: int, generator: torch.Generator, n_ops: int = 2, prob: float = 0.5, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and round: op index (uniform over 14), magnitude (1..9), apply flag (p=prob)."""
    device = device if device is not None else generator.device
    ops = torch.randint(0, len(OP_NAMES), (n, n_ops), generator=generator, device=device)
    magnitudes = torch.randint(1, MAX_MAGNITUDE, (n, n_ops), generator=generator, device=device)
    apply = torch.rand(n, n_ops, generator=generator, device=device) < prob
    return ops, magnitudes, apply


def cutout(
    x: torch.Tensor, generator: torch.Generator, fraction: float = 0.5, fill: float = GREY
) -> torch.Tensor:
    """A square of side ``fraction * H`` centred uniformly at random (clipped), set to ``fill``."""
    n, _, h, w = x.shape
    side = int(fraction * h)
    cy = torch.rand(n, generator=generator, device=x.device) * h
    cx = torch.rand(n, generator=generator, device=x.device) * w
    y0 = (cy - side / 2).clamp_min(0).long().view(n, 1, 1)
    x0 = (cx - side / 2).clamp_min(0).long().view(n, 1, 1)
    y1, x1 = (y0 + side).clamp_max(h), (x0 + side).clamp_max(w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    return x.masked_fill(inside.unsqueeze(1), fill)


def strong_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    n_ops: int = 2,
    prob: float = 0.5,
    cutout_fraction: float = 0.5,
    fill: float = GREY,
) -> torch.Tensor:
    """RandAugment (per-image ops and magnitudes) then Cutout, applied op-group by op-group."""
    ops, magnitudes, apply = sample_strong_plan(len(x), generator, n_ops, prob, x.device)
    out = x.clone()
    for round_ in range(n_ops):
        chosen = torch.where(apply[:, round_], ops[:, round_], -1)
        for op_index, op in enumerate(OPS):
            if op is _identity:
                continue
            members = (chosen == op_index).nonzero().squeeze(1)
            if members.numel() == 0:
                continue
            group = out.index_select(0, members)
            out.index_copy_(0, members, op(group, magnitudes[members, round_], generator))
    return cutout(out, generator, cutout_fraction, fill)


# ---------------------------------------------------------------------------- per image (PIL)
def sample_plan_per_image(
    rng: random.Random, n_ops: int = 2, prob: float = 0.5
) -> list[tuple[int, int, bool]]:
    """The per-image RandAugment plan: [(op index, magnitude, applied), ...]."""
    return [
        (rng.randrange(len(OP_NAMES)), rng.randint(1, MAX_MAGNITUDE - 1), rng.random() < prob)
        for _ in range(n_ops)
    ]


def _pil_op(img: Image.Image, name: str, v: int, rng: random.Random) -> Image.Image:
    factor = v * 0.9 / MAX_MAGNITUDE + 0.05
    sign = -1 if rng.random() < 0.5 else 1
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Brightness":
        return ImageEnhance.Brightness(img).enhance(factor)
    if name == "Color":
        return ImageEnhance.Color(img).enhance(factor)
    if name == "Contrast":
        return ImageEnhance.Contrast(img).enhance(factor)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Posterize":
        return ImageOps.posterize(img, int(v * 4 / MAX_MAGNITUDE) + 4)
    if name == "Rotate":
        return img.rotate(sign * int(v * 30 / MAX_MAGNITUDE))
    if name == "Sharpness":
        return ImageEnhance.Sharpness(img).enhance(factor)
    if name in ("ShearX", "ShearY"):
        s = sign * v * 0.3 / MAX_MAGNITUDE
        matrix = (1, s, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, s, 1, 0)
        return img.transform(img.size, Image.AFFINE, matrix)
    if name == "Solarize":
        return ImageOps.solarize(img, 256 - int(v * 256 / MAX_MAGNITUDE))
    if name in ("TranslateX", "TranslateY"):
        shift = sign * int(v * 0.3 / MAX_MAGNITUDE * img.size[0])
        matrix = (1, 0, shift, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, shift)
        return img.transform(img.size, Image.AFFINE, matrix)
    return img


def weak_augment_per_image(
    img: Image.Image, rng: random.Random, hflip: bool = True, pad_fraction: float = 0.125
) -> Image.Image:
    """Flip (optional), reflect-pad and random crop one PIL image."""
    if hflip and rng.random() < 0.5:
        img = ImageOps.mirror(img)
    w, h = img.size
    pad = max(1, int(pad_fraction * h))
    array = np.asarray(img)
    widths = ((pad, pad), (pad, pad)) + (((0, 0),) if array.ndim == 3 else ())
    padded = np.pad(array, widths, mode="reflect")
    top, left = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    return Image.fromarray(padded[top : top + h, left : left + w])


def strong_augment_per_image(
    img: Image.Image, rng: random.Random, n_ops: int = 2, prob: float = 0.5,
    cutout_fraction: float = 0.5,
) -> Image.Image:
    """RandAugment + Cutout on one PIL image (the reference the batched path reproduces)."""
    for op_index, magnitude, applied in sample_plan_per_image(rng, n_ops, prob):
        if applied:
            img = _pil_op(img, OP_NAMES[op_index], magnitude, rng)
    array = np.array(img)
    h, w = array.shape[:2]
    side = int(cutout_fraction * h)
    y0 = int(max(0, rng.uniform(0, h) - side / 2))
    x0 = int(max(0, rng.uniform(0, w) - side / 2))
    array[y0 : y0 + side, x0 : x0 + side] = 127
    return Image.fromarray(array)
