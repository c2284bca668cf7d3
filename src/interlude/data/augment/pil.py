"""The per-image PIL path (``train.augment_on: workers``): RandAugmentMC + Cutout and the weak
flip + reflect-pad crop on one PIL image or uint8 array, as kekmodel/FixMatch-pytorch does it.

It shares the op list and magnitude tables with the batched path (:mod:`.plan`); the batched
tensor ops are held within stated tolerances of these functions by ``tests/test_augment.py``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from .plan import (
    ENHANCE,
    OP_NAMES,
    PARAMETER_MAX,
    POSTERIZE_BITS,
    ROTATE_DEG,
    SHEAR,
    SIGNED,
    SOLARIZE,
    TRANSLATE,
)

PilOp = Callable[[Image.Image, int, int, int], Image.Image]


def _pil_affine(img: Image.Image, coeffs: tuple[float, ...], fill: int) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, fillcolor=_pil_fill(img, fill))


def _pil_fill(img: Image.Image, fill: int) -> int | tuple[int, ...]:
    return fill if img.mode == "L" else (fill,) * len(img.getbands())


def _enhance(kind: type[ImageEnhance._Enhance]) -> PilOp:
    return lambda img, v, s, fill: kind(img).enhance(ENHANCE[v])


PIL_OPS: dict[str, PilOp] = {  # (img, magnitude, sign +-1, fill level) -> img
    "AutoContrast": lambda img, v, s, fill: ImageOps.autocontrast(img),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Equalize": lambda img, v, s, fill: ImageOps.equalize(img),
    "Identity": lambda img, v, s, fill: img,
    "Posterize": lambda img, v, s, fill: ImageOps.posterize(img, POSTERIZE_BITS[v]),
    "Rotate": lambda img, v, s, fill: img.rotate(s * ROTATE_DEG[v],
                                                 fillcolor=_pil_fill(img, fill)),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, v, s, fill: _pil_affine(img, (1, s * SHEAR[v], 0, 0, 1, 0), fill),
    "ShearY": lambda img, v, s, fill: _pil_affine(img, (1, 0, 0, s * SHEAR[v], 1, 0), fill),
    "Solarize": lambda img, v, s, fill: ImageOps.solarize(img, SOLARIZE[v]),
    "TranslateX": lambda img, v, s, fill: _pil_affine(
        img, (1, 0, int(s * TRANSLATE[v] * img.size[0]), 0, 1, 0), fill),
    "TranslateY": lambda img, v, s, fill: _pil_affine(
        img, (1, 0, 0, 0, 1, int(s * TRANSLATE[v] * img.size[1])), fill),
}


def to_pil(img: Image.Image | np.ndarray) -> Image.Image:
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
    """The PIL path's RandAugmentMC + Cutout on one PIL image or uint8 ``(H, W[, C])`` array."""
    out = to_pil(img)
    for op, v, apply in sample_plan_per_image(rng, n_ops, prob):
        if apply:
            sign = -1 if op in SIGNED and rng.random() < 0.5 else 1
            out = PIL_OPS[OP_NAMES[op]](out, v, sign, fill)
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
    """The PIL path's flip + reflect-pad + random crop on one image."""
    array = np.asarray(to_pil(img))
    h, w = array.shape[:2]
    if hflip and rng.random() < 0.5:
        array = array[:, ::-1]
    pad = max(1, int(pad_fraction * h))
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (array.ndim - 2)
    padded = np.pad(array, widths, mode="reflect")
    top, left = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
    crop = np.ascontiguousarray(padded[top : top + h, left : left + w])
    return _like(Image.fromarray(crop), img)
