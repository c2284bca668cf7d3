"""Deterministic image transforms applied once at load time (resizing)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from interlude.data.base import ImageSet, RawDataset
from interlude.data.rows import ImageRows, as_rows


def resize_images(
    images: np.ndarray | ImageRows, size: int | tuple[int, int], chunk: int = 4096,
    interpolation: str = "bilinear",
) -> np.ndarray | ImageRows:
    """Resize uint8 (N, C, H, W) images to ``size`` (side, or (height, width)), antialiased, with
    the ``bilinear`` or ``bicubic`` filter (``data.interpolation``), ``chunk`` rows at a time.
    Images already at the size are returned as they are (a disk-backed set stays on disk)."""
    height, width = (size, size) if isinstance(size, int) else size
    if tuple(images.shape[-2:]) == (height, width):
        return images
    out = np.empty((len(images), images.shape[1], height, width), dtype=np.uint8)
    start = 0
    for rows in as_rows(images).chunks(chunk):
        batch = torch.from_numpy(np.ascontiguousarray(rows)).float()
        resized = F.interpolate(batch, size=(height, width), mode=interpolation, antialias=True)
        out[start : start + len(rows)] = resized.round().clamp(0, 255).to(torch.uint8).numpy()
        start += len(rows)
    return out


def _resize_set(images: ImageSet | None, size: int, interpolation: str) -> ImageSet | None:
    if images is None or tuple(images.images.shape[-2:]) == (size, size):
        return images  # as it is: a disk-backed set already at the size stays on disk
    return ImageSet(resize_images(images.images, size, interpolation=interpolation), images.labels)


def resize_raw(raw: RawDataset, size: int, interpolation: str = "bilinear") -> RawDataset:
    """Return ``raw`` with every split resized to ``size`` x ``size``."""
    raw.train = _resize_set(raw.train, size, interpolation)  # type: ignore[assignment]
    raw.test = _resize_set(raw.test, size, interpolation)
    raw.val = _resize_set(raw.val, size, interpolation)
    raw.extra_unlabeled = _resize_set(raw.extra_unlabeled, size, interpolation)
    return raw
