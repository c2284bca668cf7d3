"""User input to images: arrays of any common layout, or image files, to uint8 ``(N, C, H, W)``.

Everything that turns user input into the uint8 images a network was trained on lives here, so
the estimator, ``interlude predict`` and exported models apply *one* set of rules:

- **files** are decoded exactly as the ``imagefolder`` loader does (EXIF rotation, RGB, bilinear
  resize to the model's resolution, luma for 1-channel models), so a prediction sees the same
  pixels training did;
- **arrays** may be ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with ``C`` in 1 or 3, or
  ``(N, F)`` rows of flattened square grayscale images (``load_digits().data``: 64 = 8x8; a row
  whose length is not a square ``s*s >= 16`` is zero-padded to the next one, so any numeric table
  is accepted);
- **values** (:func:`pixel_scale`, the one rule for every dtype and every entry point: ``fit``,
  ``predict``, ``predict_proba``, ``score``, a loaded export, and any later entry point, which
  must call :func:`to_uint8_images`): integers must lie in 0..255; floats must be finite and lie
  in ``[0, 1]`` (taken as such when their maximum is at most 1) or in ``[0, 255]``; anything
  above 255 is refused, never clipped, whatever the dtype (a model remembers the scale it was
  fitted with and applies it to later inputs, so a dark batch is not mistaken for another
  scale).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interlude.data.transforms import resize_images
from interlude.errors import DataError

log = logging.getLogger("interlude")

MIN_SIDE = 4  # the augmentations need images of at least 3x3; the config floor is 4


# ----------------------------------------------------------------------------- files
def is_path_list(X: Any) -> bool:
    """Whether ``X`` is a sequence of file paths (not an array of numbers)."""
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.dtype.kind in "UO" and len(X) > 0 and all(
            isinstance(v, (str, os.PathLike)) for v in X
        )
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(
        isinstance(v, (str, os.PathLike)) for v in X
    )


def read_image(path: str | os.PathLike, channels: int, height: int, width: int,
               interpolation: str = "bilinear") -> np.ndarray:
    """One image file as uint8 ``(channels, height, width)``, decoded as the imagefolder loader."""
    from interlude.data.cache import to_luma
    from interlude.data.decode import decode_image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        rgb, _ = decode_image(path, (height, width), interpolation)
    except Exception as exc:  # PIL raises many types for damaged or non-image files
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return to_luma(rgb[None])[0] if channels == 1 else rgb


def read_images(
    paths: Sequence[str | os.PathLike], channels: int | None, height: int, width: int,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Image files as uint8 ``(N, C, H, W)``; ``channels=None`` picks 1 when every file is gray."""
    from interlude.data.cache import to_luma

    rgb = np.stack([read_image(p, 3, height, width, interpolation) for p in paths])
    if channels is None:
        gray = all((im[0] == im[1]).all() and (im[1] == im[2]).all() for im in rgb)
        channels = 1 if gray else 3
    return to_luma(rgb) if channels == 1 else rgb


# ----------------------------------------------------------------------------- arrays
def to_uint8_images(X: Any, scale: float | None = None) -> tuple[np.ndarray, float | None]:
    """Convert an array-like of images to uint8 ``(N, C, H, W)`` (rules in the module docstring).

    Returns the images and the float scale used (1 or 255; ``None`` for integer input). Pass the
    scale returned at fit time back in at predict time.
    """
    array = _as_numeric_array(X)
    images = _to_nchw(array)
    scale = pixel_scale(images, scale)
    if scale is not None:  # floats within [0, scale] (a last ulp above rounds to 255)
        images = np.clip(np.round(images * (255.0 / scale)), 0, 255)
    return np.ascontiguousarray(images.astype(np.uint8)), scale


def pixel_scale(images: np.ndarray, fitted: float | None = None) -> float | None:
    """The input-scaling rule: the float scale of ``images`` (1 or 255), None for integers.

    Integers must lie in 0..255. Floats must lie in ``[0, fitted]`` when a model was fitted on
    floats, else in ``[0, 1]`` (scale 1) or ``[0, 255]`` (scale 255). Values outside are a
    ValueError saying how to rescale: clipping them would train or predict on other pixels than
    the user's without a word.
    """
    if images.dtype.kind != "f":
        _check_integer_range(images)
        return None
    return _float_scale(images, fitted)


def _as_numeric_array(X: Any) -> np.ndarray:
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError("sparse input is not supported: pass dense images (X.toarray())")
    if isinstance(X, (list, tuple)) and X and hasattr(X[0], "shape"):
        shapes = {tuple(np.shape(x)) for x in X}
        if len(shapes) > 1:
            raise ValueError(
                f"the images in X have different shapes ({', '.join(map(str, sorted(shapes)[:4]))}"
                "); resize them to one shape, or pass file paths (they are resized on load)"
            )
    array = np.asarray(X)
    if array.dtype.kind == "c":
        raise ValueError("Complex data not supported: images must be real numbers")
    if array.dtype.kind in "OUS":
        array = array.astype(np.float64)  # raises TypeError for non-numbers, as scikit-learn
    if array.dtype.kind == "b":
        array = array.astype(np.float64)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"X must hold numbers (images), got dtype {array.dtype}")
    return array


def _to_nchw(array: np.ndarray) -> np.ndarray:
    if array.ndim < 2 or array.ndim > 4:
        raise ValueError(
            f"Expected 2D (flattened images), 3D (N, H, W) or 4D (N, C, H, W) array, got "
            f"{array.ndim}D array of shape {array.shape}. Reshape your data: a single image "
            "needs a leading axis of 1, e.g. X[None]"
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={array.shape}) while a minimum of 1 is required."
        )
    if array.ndim == 2:
        return _flat_rows_to_images(array)
    if array.ndim == 3:
        images = array[:, None]
    elif array.shape[1] in (1, 3):
        images = array
    elif array.shape[3] in (1, 3):
        images = array.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"images of shape {array.shape[1:]} have neither 1 nor 3 channels first or last; "
            "pass (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 (gray) or 3 (RGB)"
        )
    _check_finite(images)
    if min(images.shape[2:]) < MIN_SIDE:
        raise ValueError(
            f"images of {images.shape[2]}x{images.shape[3]} pixels are too small; they need at "
            f"least {MIN_SIDE}x{MIN_SIDE} (set resolution= to upscale them)"
        )
    return images


def _flat_rows_to_images(array: np.ndarray) -> np.ndarray:
    """``(N, F)`` rows -> ``(N, 1, s, s)``: square side ``s``, zero-padded when F is not s*s."""
    n, features = array.shape
    if features == 0:
        raise ValueError(
            f"0 feature(s) (shape={array.shape}) while a minimum of 1 is required."
        )
    _check_finite(array)
    side = max(MIN_SIDE, math.isqrt(features - 1) + 1)
    padded = np.zeros((n, side * side), dtype=array.dtype)
    padded[:, :features] = array
    return padded.reshape(n, 1, side, side)


def _check_finite(array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        what = "NaN" if np.isnan(array).any() else "infinity"
        raise ValueError(f"Input X contains {what}: images must hold finite pixel values")


def _float_scale(images: np.ndarray, scale: float | None) -> float:
    low, high = float(images.min()), float(images.max())
    if low < 0:
        raise ValueError(
            f"Negative values in data passed to interlude (min {low:g}): float images must be in "
            "[0, 1] or [0, 255]"
        )
    if scale is None:
        if high > 255.0 * (1 + 1e-6):
            raise ValueError(
                f"float images must be in [0, 1] or [0, 255], X has values up to {high:g}; "
                "rescale it (e.g. 16-bit data: X / 65535) instead of having it clipped"
            )
        return 1.0 if high <= 1.0 else 255.0
    if high > scale * (1 + 1e-6):
        raise ValueError(
            f"X has values up to {high:g}, but the model was fitted on float images in "
            f"[0, {scale:g}]; pass images on the same scale"
        )
    return scale


def _check_integer_range(images: np.ndarray) -> None:
    low, high = int(images.min()), int(images.max())
    if low < 0:
        raise ValueError(
            f"Negative values in data passed to interlude (min {low}): integer images must be "
            "in 0..255"
        )
    if high > 255:
        raise ValueError(
            f"integer images must be in 0..255, X has values up to {high}; rescale it (e.g. "
            "16-bit images: X // 257) or pass floats in [0, 1]"
        )


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named, plus the image files inside named folders (recursive, sorted).

    A folder contributes the files whose extension PIL can open; a file named directly is
    always kept (an unreadable one is reported when it is decoded).
    """
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.rglob("*") if p.is_file()
                           and p.suffix.lower() in extensions and not p.name.startswith("."))
            if not found:
                log.warning("%s holds no image files", entry)
            files.extend(found)
        elif entry.exists():
            files.append(entry)
        else:
            raise DataError(f"image not found: {entry}")
    if not files:
        raise DataError("no image files to read")
    return files


def read_images_skipping(
    paths: Sequence[Path], channels: int, height: int, width: int,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, list[str | None]]:
    """Images of the readable files and, per path, None or why it could not be read."""
    images, errors = [], []
    for path in paths:
        try:
            images.append(read_image(path, channels, height, width, interpolation))
            errors.append(None)
        except DataError as exc:
            log.warning("skipped %s", exc)
            errors.append(str(exc))
    stacked = np.stack(images) if images else np.empty((0, channels, height, width), np.uint8)
    return stacked, errors


def images_for_model(X: Any, image_shape: Sequence[int],
                     interpolation: str = "bilinear") -> np.ndarray:
    """uint8 ``(N, C, H, W)`` at a model's ``(C, H, W)``, from arrays or image files, resized
    with the filter the model was trained with."""
    channels, height, width = (int(v) for v in image_shape)
    if is_path_list(X):
        return read_images(list(X), channels, height, width, interpolation)
    images, _ = to_uint8_images(X)
    if images.shape[1] != channels:
        raise ValueError(
            f"X has {images.shape[1]}-channel images but the model takes {channels} channel(s)"
        )
    return resize_images(images, (height, width), interpolation=interpolation)
