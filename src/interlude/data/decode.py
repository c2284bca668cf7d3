"""Decoding one image file into uint8 RGB, by a fixed rule of its bit depth.

Used by the image folders (:mod:`interlude.data.folder`) and by ``interlude predict``. Bumping
:data:`DECODER_VERSION` whenever a file would decode to other pixels makes the image cache
(:mod:`interlude.data.cache`) rebuild entries made by the old decoder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

DECODER_VERSION = 1
"""Version of the decoding rules below; part of every cached folder's key."""

_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_GRAY_MODES = frozenset({"1", "L", "LA"}) | _WIDE_MODES


# Bit depths. Every file is brought to 8 bits by a fixed rule of its *mode* (and, for TIFF, its
# declared BitsPerSample), never by its own maximum, so equal values mean the same in every file:
#
# - 8-bit modes (1, L, LA, P, PA, RGB, RGBA, CMYK, ...): as they are (PIL's convert("RGB")).
#   Pillow itself reads 16-bit-per-channel colour PNGs as 8-bit RGB (it keeps the high byte).
# - 16-bit integer gray ("I;16", "I;16B", "I;16L", "I;16N"): v * 255 / 65535 (v / 257).
#   A TIFF that declares fewer bits is scaled by its own range: Pillow opens 12-bit TIFFs as
#   "I;16" holding 0..4095, which become v * 255 / 4095. Other files carry no such declaration
#   (PIL does not read PNG's sBIT), so 12-bit data saved in a 16-bit PNG is scaled by 65535 and
#   looks dark; the load summary warns when no 16-bit image of a dataset exceeds 4095.
# - "I" (32-bit int; Pillow uses it for signed 16-bit TIFFs, some 16-bit PNGs in older versions,
#   and 32-bit TIFFs): taken as 16-bit data, v * 255 / 65535; values outside 0..65535 clip.
# - "F" (float): taken as [0, 1], v * 255; values outside clip, NaN -> 0. 0.5 -> 128.
# Scaled values round half up (floor(x + 0.5)) and clip to 0..255. Clipping is counted and
# reported once per dataset with the summary of the depths found (see _report_depths).
_MAX_12_BIT = 4095


@dataclass(frozen=True)
class Depth:
    """How one file's values were brought to 8 bits: ``kind`` (a summary line, e.g. "8-bit RGB"
    or "16-bit gray [I;16] (x 1/257)"), whether values fell outside the range and were clipped,
    and for integer gray files the significant bits and the largest value (reported only)."""

    kind: str
    clipped: bool = False
    bits: int = 8
    peak: float = 0.0


_EIGHT_BIT_NAMES = {"1": "1-bit", "L": "8-bit gray", "LA": "8-bit gray+alpha", "P": "8-bit palette",
                    "PA": "8-bit palette+alpha"}


def _declared_bits(img: Image.Image) -> int:
    """Significant bits of a 16-bit-or-wider integer gray image: a TIFF's BitsPerSample when it
    declares 1..15 (e.g. 12), else 16. Read before any transform (a copy has no TIFF tags)."""
    tags = getattr(img, "tag_v2", None)
    if img.format == "TIFF" and tags is not None:
        declared = tags.get(258)  # BitsPerSample
        first = declared[0] if isinstance(declared, tuple) and declared else declared
        if isinstance(first, int) and 1 <= first < 16:
            return first
    return 16


def _ratio(top: int) -> str:
    return f"1/{top // 255}" if top % 255 == 0 else f"255/{top}"


def _wide_to_gray8(img: Image.Image, bits: int) -> tuple[Image.Image, Depth]:
    """A 16-bit/12-bit/32-bit-int/float gray image as 8-bit "L" by the fixed rule above."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        bits, top, kind = 0, 1.0, "float gray [F] (0..1 x 255)"
    else:
        bits = 16 if img.mode == "I" else bits  # "I" is taken as 16-bit data whatever it declares
        full = 2**bits - 1
        top, kind = float(full), f"{bits}-bit gray [{img.mode}] (x {_ratio(full)})"
    finite = np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0)
    clipped = bool(values.size) and bool(
        (~np.isfinite(values)).any() or finite.min() < 0 or finite.max() > top
    )
    peak = float(finite.max()) if values.size else 0.0
    scaled = np.floor(np.clip(finite, 0.0, top) * (255.0 / top) + 0.5)
    gray8 = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))
    return gray8, Depth(kind, clipped, bits, peak)


def _to_rgb(img: Image.Image, bits: int = 16) -> tuple[Image.Image, Depth]:
    """RGB copy of any PIL image and how its values were scaled (16-bit/12-bit/float gray by a
    fixed rule of its mode: see the notes above; ``bits`` from :func:`_declared_bits`)."""
    if img.mode in _WIDE_MODES:
        img, depth = _wide_to_gray8(img, bits)
        return img.convert("RGB"), depth
    depth = Depth(_EIGHT_BIT_NAMES.get(img.mode, f"8-bit {img.mode}"))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB"), depth


RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
"""PIL filters of ``data.interpolation``, the same names as the tensor resize's modes."""


def _decode(path: Path, size: int | tuple[int, int],
            interpolation: str = "bilinear") -> tuple[np.ndarray, bool, Depth]:
    height, width = (size, size) if isinstance(size, int) else size
    with Image.open(path) as img:
        bits = _declared_bits(img)
        img = ImageOps.exif_transpose(img)  # phone photos: apply the stored rotation
        gray_mode = img.mode in _GRAY_MODES
        rgb, depth = _to_rgb(img, bits)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), RESAMPLING[interpolation])
    array = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    gray = gray_mode or bool((array[0] == array[1]).all() and (array[1] == array[2]).all())
    return array, gray, depth


def decode_image(path: Path, size: int | tuple[int, int],
                 interpolation: str = "bilinear") -> tuple[np.ndarray, bool]:
    """One file as RGB uint8 ``(3, H, W)`` (``size`` = side, or (height, width)) and whether it is
    grayscale (by mode or by identical channels, e.g. an X-ray saved as RGB). Raises
    OSError/ValueError if unreadable.

    16-bit, 12-bit (TIFF) and float images are scaled to 8 bits by their mode's bit depth, the
    same for every file, never by the image's own maximum: 16-bit ``v / 257``, 12-bit TIFF
    ``v * 255 / 4095``, float ``[0, 1] -> 0..255`` (clipped), rounding half up."""
    array, gray, _ = _decode(path, size, interpolation)
    return array, gray


def try_decode(path: Path, size: int,
               interpolation: str = "bilinear") -> tuple[np.ndarray, bool, Depth] | str:
    try:
        return _decode(path, size, interpolation)
    except Exception as exc:  # PIL fails on damaged files in many ways: skip them all
        return f"{type(exc).__name__}: {exc}"



@dataclass
class DepthSummary:
    """How the files of a set were brought to 8 bits, in the form the load summary reports:
    files per kind (in order of first appearance), clipped files per kind, whether any file was
    not 8-bit, and the largest value of a 16-bit integer gray file (None if there was none).
    Saved in the image cache's metadata, so a cached set reports what its decoding found."""

    kinds: dict[str, int] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    wide: bool = False
    peak16: float | None = None

    def add(self, depth: Depth) -> None:
        self.kinds[depth.kind] = self.kinds.get(depth.kind, 0) + 1
        if depth.clipped:
            self.clipped[depth.kind] = self.clipped.get(depth.kind, 0) + 1
        self.wide = self.wide or depth.bits != 8
        if depth.bits == 16:
            self.peak16 = depth.peak if self.peak16 is None else max(self.peak16, depth.peak)

    @property
    def count(self) -> int:
        return sum(self.kinds.values())

    def __add__(self, other: DepthSummary) -> DepthSummary:
        kinds, clipped = Counter(self.kinds), Counter(self.clipped)
        kinds.update(other.kinds)
        clipped.update(other.clipped)
        peaks = [p for p in (self.peak16, other.peak16) if p is not None]
        return DepthSummary(dict(kinds), dict(clipped), self.wide or other.wide,
                            max(peaks) if peaks else None)

    def to_json(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "clipped": self.clipped, "wide": self.wide,
                "peak16": self.peak16}

    @classmethod
    def from_json(cls, tree: Any) -> DepthSummary:
        """Rebuild from metadata; raises ValueError when it is malformed."""
        if not isinstance(tree, dict):
            raise ValueError("depth summary is not a mapping")

        def counts(value: Any) -> dict[str, int]:
            if not isinstance(value, dict) or not all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                    and v > 0 for k, v in value.items()):
                raise ValueError("depth counts are not {kind: positive count}")
            return dict(value)

        wide, peak = tree.get("wide"), tree.get("peak16")
        if not isinstance(wide, bool):
            raise ValueError("depth summary 'wide' is not a boolean")
        if peak is not None and (isinstance(peak, bool) or not isinstance(peak, (int, float))):
            raise ValueError("depth summary 'peak16' is not a number")
        return cls(counts(tree.get("kinds")), counts(tree.get("clipped")), wide,
                   None if peak is None else float(peak))
