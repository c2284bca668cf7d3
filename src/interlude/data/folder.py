"""Your own images: ``imagefolder`` (class subfolders) and ``tmed2`` (echocardiogram views).

Layout::

    labeled_dir/<class>/<image>      every image here is used as a labeled example
    unlabeled_dir/**/<image>         any nesting; labels, if any, are ignored
    val_dir/<class>/<image>          optional, same class names as labeled_dir
    test_dir/<class>/<image>         optional, same class names as labeled_dir

Every image is decoded once, at load time, into a uint8 array: converted to RGB, then resized to a
square of ``data.resolution`` pixels (default 32 for ``imagefolder``, 112 for ``tmed2``; the
aspect ratio is not kept, nothing is cropped). Channels: ``data.grayscale`` forces 1 (True) or 3
(False); by default images are stored with 1 channel when *every* file is grayscale, else 3.
16-bit, 12-bit (TIFF) and float images are brought to 8 bits by a fixed rule of their mode, the
same for every file (16-bit: v / 257; float: [0, 1] -> 0..255), never by an image's own maximum;
one log line per dataset summarises the depths found (see "Bit depths" below).

Unreadable files are skipped with a warning and counted in the dataset notes, so one bad JPEG
does not cost a run; an empty class folder or a class unknown to ``labeled_dir`` is an error,
because it means the folders are not what the user thinks they are.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from interlude.config import DataConfig
from interlude.data.base import UNLABELED, ImageSet, RawDataset
from interlude.data.registry import register_dataset
from interlude.errors import DataError

log = logging.getLogger("interlude")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_RESOLUTION = 32
TMED2_CLASSES = ["PLAX", "PSAX", "A4C", "A2C"]
TMED2_RESOLUTION = 112
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_GRAY_MODES = frozenset({"1", "L", "LA"}) | _WIDE_MODES
_CHUNK = 4096


@dataclass
class _Decoded:
    """Images of one folder as RGB ``(N, 3, S, S)``, whether each file was grayscale, the files
    that could not be read (path, reason), and how each decoded file was brought to 8 bits."""

    images: np.ndarray
    labels: np.ndarray
    gray: np.ndarray
    skipped: list[tuple[Path, str]]
    depths: list[_Depth] = field(default_factory=list)


# --------------------------------------------------------------------------- finding files
def _hidden(path: Path, root: Path) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in path.relative_to(root).parts)


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` at any depth, sorted so the pool order is reproducible."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not _hidden(p, folder)
    )


def _require_dir(path: str | None, key: str, hint: str) -> Path:
    if not path:
        raise DataError(f"{key} is not set: {hint}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{key}={path}: folder not found ({folder.resolve()})")
    return folder


def class_folders(root: Path, key: str) -> dict[str, list[Path]]:
    """``{class name: image files}`` for each subfolder of ``root``."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not _hidden(d, root))
    if not subdirs:
        raise DataError(
            f"{key}={root} has no subfolders: put each class's images in their own folder, "
            f"e.g. {root}/cat/img1.png and {root}/dog/img2.jpg"
        )
    files = {d.name: image_files(d) for d in subdirs}
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {key}={root} hold no images "
            f"({'/'.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder"
        )
    return files


def _warn_loose_images(root: Path, notes: list[str]) -> None:
    """Images next to the class folders belong to no class; say so rather than drop them quietly."""
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        _note_warning(notes, f"{len(loose)} image(s) directly in {root} are ignored: labeled "
                             "images must be inside a class subfolder")


def _class_order(found: dict[str, list[Path]], fixed: list[str] | None, root: Path) -> list[str]:
    if fixed is None:
        return sorted(found)
    missing = [c for c in fixed if c not in found]
    extra = [c for c in found if c not in fixed]
    if missing or extra:
        raise DataError(
            f"{root} must hold exactly the class folders {', '.join(fixed)}; "
            f"missing: {', '.join(missing) or '-'}, unexpected: {', '.join(extra) or '-'}"
        )
    return list(fixed)


def _check_known_classes(found: dict[str, list[Path]], classes: list[str], key: str,
                         root: Path, labeled_dir: Path) -> None:
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{key}={root} has class folder(s) {', '.join(unknown)} that are not in "
            f"data.labeled_dir={labeled_dir} (classes: {', '.join(classes)}); the class folders "
            "must use the same names"
        )


# --------------------------------------------------------------------------- decoding
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
class _Depth:
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


def _wide_to_gray8(img: Image.Image, bits: int) -> tuple[Image.Image, _Depth]:
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
    return gray8, _Depth(kind, clipped, bits, peak)


def _to_rgb(img: Image.Image, bits: int = 16) -> tuple[Image.Image, _Depth]:
    """RGB copy of any PIL image and how its values were scaled (16-bit/12-bit/float gray by a
    fixed rule of its mode: see the notes above; ``bits`` from :func:`_declared_bits`)."""
    if img.mode in _WIDE_MODES:
        img, depth = _wide_to_gray8(img, bits)
        return img.convert("RGB"), depth
    depth = _Depth(_EIGHT_BIT_NAMES.get(img.mode, f"8-bit {img.mode}"))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB"), depth


_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
"""PIL filters of ``data.interpolation``, the same names as the tensor resize's modes."""


def _decode(path: Path, size: int | tuple[int, int],
            interpolation: str = "bilinear") -> tuple[np.ndarray, bool, _Depth]:
    height, width = (size, size) if isinstance(size, int) else size
    with Image.open(path) as img:
        bits = _declared_bits(img)
        img = ImageOps.exif_transpose(img)  # phone photos: apply the stored rotation
        gray_mode = img.mode in _GRAY_MODES
        rgb, depth = _to_rgb(img, bits)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), _RESAMPLING[interpolation])
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


def _try_decode(path: Path, size: int, interpolation: str) -> tuple[np.ndarray, bool, _Depth] | str:
    try:
        return _decode(path, size, interpolation)
    except Exception as exc:  # PIL fails on damaged files in many ways: skip them all
        return f"{type(exc).__name__}: {exc}"


def _decode_files(files: list[Path], labels: list[int], size: int,
                  interpolation: str = "bilinear") -> _Decoded:
    """Decode in threads (PIL releases the GIL), keeping file order."""
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    gray = np.zeros(len(files), dtype=bool)
    ok = np.zeros(len(files), dtype=bool)
    skipped: list[tuple[Path, str]] = []
    depths: list[_Depth] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(lambda p: _try_decode(p, size, interpolation), files)):
            if isinstance(result, str):
                skipped.append((files[i], result))
            else:
                images[i], gray[i], ok[i] = result[0], result[1], True
                depths.append(result[2])
    keep = np.flatnonzero(ok)
    return _Decoded(images[keep], np.asarray(labels, dtype=np.int64)[keep], gray[keep], skipped,
                    depths)


def _decode_classes(files: dict[str, list[Path]], classes: list[str], size: int,
                    interpolation: str = "bilinear") -> _Decoded:
    paths = [p for c in classes for p in files.get(c, [])]
    labels = [i for i, c in enumerate(classes) for _ in files.get(c, [])]
    return _decode_files(paths, labels, size, interpolation)


def _to_luma(rgb: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) -> (N, 1, H, W) with PIL's ITU-R 601-2 integer formula (exact for gray)."""
    out = np.empty((len(rgb), 1, *rgb.shape[2:]), dtype=np.uint8)
    for start in range(0, len(rgb), _CHUNK):
        c = rgb[start : start + _CHUNK].astype(np.uint32)
        out[start : start + _CHUNK, 0] = (
            c[:, 0] * 19595 + c[:, 1] * 38470 + c[:, 2] * 7471 + 0x8000
        ) >> 16
    return out


def _channel_stats(sets: list[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, accumulated in chunks to bound memory."""
    channels = sets[0].shape[1]
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for images in sets:
        for start in range(0, len(images), _CHUNK):
            chunk = images[start : start + _CHUNK].astype(np.float64) / 255.0
            total += chunk.sum(axis=(0, 2, 3))
            total_sq += (chunk**2).sum(axis=(0, 2, 3))
            count += chunk[:, 0].size
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


# --------------------------------------------------------------------------- bookkeeping
def _note_warning(notes: list[str], message: str) -> None:
    log.warning(message)
    notes.append(message)


def _report_skipped(decoded: _Decoded, root: Path, notes: list[str]) -> None:
    if not decoded.skipped:
        return
    examples = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in decoded.skipped[:3])
    _note_warning(notes, f"skipped {len(decoded.skipped)} unreadable image(s) in {root}: "
                         f"{examples}")


def _report_depths(decoded: list[_Decoded], notes: list[str]) -> None:
    """One summary per dataset of the bit depths found and how they were scaled (logged; also a
    dataset note when anything was not 8-bit), plus warnings for clipped values and for 16-bit
    files that look like 12-bit data."""
    depths = [d for one in decoded for d in one.depths]
    if not depths:
        return
    counts = Counter(d.kind for d in depths)
    summary = f"decoded {len(depths)} images: " + ", ".join(
        f"{n} {kind}" for kind, n in counts.most_common()
    )
    log.info(summary)
    if any(d.bits != 8 for d in depths):
        notes.append(summary)
    clipped = Counter(d.kind for d in depths if d.clipped)
    if clipped:
        _note_warning(notes, "values outside the decoding range were clipped in "
                             + ", ".join(f"{n} {kind}" for kind, n in clipped.most_common())
                             + " image(s): 16-bit and 'I' files are read as 0..65535, float "
                             "files as 0..1; rescale such files to that range first")
    sixteen = [d.peak for d in depths if d.bits == 16]
    if sixteen and max(sixteen) <= _MAX_12_BIT:
        _note_warning(notes, f"no 16-bit image exceeds {_MAX_12_BIT}: if these are 12-bit data "
                             "saved in 16 bits they are scaled by 65535 like any 16-bit file "
                             "and decode dark (at most 16 of 255); save them as 12-bit TIFF or "
                             "stretch them to the 16-bit range")


def _check_every_class_readable(decoded: _Decoded, classes: list[str], root: Path) -> None:
    counts = np.bincount(decoded.labels, minlength=len(classes))
    dead = [classes[c] for c in np.flatnonzero(counts == 0)]
    if dead:
        raise DataError(f"no readable image in class folder(s) {', '.join(dead)} of {root}")


# --------------------------------------------------------------------------- loader
@dataclass
class _Layout:
    """The files of every folder, checked for consistency before anything is decoded."""

    classes: list[str]
    labeled: tuple[Path, dict[str, list[Path]]]
    unlabeled: tuple[Path, list[Path]]
    labeled_extras: dict[str, tuple[Path, dict[str, list[Path]]]]  # "val" / "test"


def _scan(cfg: DataConfig, fixed_classes: list[str] | None, notes: list[str]) -> _Layout:
    labeled_dir = _require_dir(cfg.labeled_dir, "data.labeled_dir",
                               "point it at a folder with one subfolder of images per class")
    unlabeled_dir = _require_dir(cfg.unlabeled_dir, "data.unlabeled_dir",
                                 "point it at a folder of unlabeled images (any nesting); "
                                 "semi-supervised training needs them")
    labeled = class_folders(labeled_dir, "data.labeled_dir")
    _warn_loose_images(labeled_dir, notes)
    classes = _class_order(labeled, fixed_classes, labeled_dir)
    if len(classes) < 2:
        raise DataError(f"data.labeled_dir={labeled_dir} has only the class folder {classes[0]}; "
                        "a classifier needs at least 2 classes")
    extras: dict[str, tuple[Path, dict[str, list[Path]]]] = {}
    for key, path in (("val", cfg.val_dir), ("test", cfg.test_dir)):
        if path:
            root = _require_dir(path, f"data.{key}_dir", "")
            found = class_folders(root, f"data.{key}_dir")
            _warn_loose_images(root, notes)
            _check_known_classes(found, classes, f"data.{key}_dir", root, labeled_dir)
            extras[key] = (root, found)
    unlabeled = image_files(unlabeled_dir)
    if not unlabeled:
        raise DataError(f"data.unlabeled_dir={unlabeled_dir} holds no images "
                        f"({'/'.join(sorted(IMAGE_SUFFIXES))})")
    return _Layout(classes, (labeled_dir, labeled), (unlabeled_dir, unlabeled), extras)


def _decode_layout(layout: _Layout, size: int, notes: list[str],
                   interpolation: str = "bilinear") -> dict[str, _Decoded]:
    """Decode every folder: ``train`` (labeled), ``unlabeled`` and optional ``val``/``test``."""
    labeled_dir, labeled_files = layout.labeled
    decoded = {"train": _decode_classes(labeled_files, layout.classes, size, interpolation)}
    _report_skipped(decoded["train"], labeled_dir, notes)
    _check_every_class_readable(decoded["train"], layout.classes, labeled_dir)
    unlabeled_dir, unlabeled_files = layout.unlabeled
    decoded["unlabeled"] = _decode_files(
        unlabeled_files, [UNLABELED] * len(unlabeled_files), size, interpolation
    )
    _report_skipped(decoded["unlabeled"], unlabeled_dir, notes)
    if len(decoded["unlabeled"].images) == 0:
        raise DataError(f"no readable image in data.unlabeled_dir={unlabeled_dir}")
    for key, (root, found) in layout.labeled_extras.items():
        decoded[key] = _decode_classes(found, layout.classes, size, interpolation)
        _report_skipped(decoded[key], root, notes)
    _report_depths(list(decoded.values()), notes)
    return decoded


def load_image_folders(
    cfg: DataConfig,
    name: str,
    *,
    classes: list[str] | None = None,
    default_resolution: int = DEFAULT_RESOLUTION,
    default_grayscale: bool | None = None,
    normalise: bool = True,
) -> RawDataset:
    """Shared loader for ``imagefolder`` and fixed-class layouts such as ``tmed2``."""
    size = cfg.resolution or default_resolution
    notes: list[str] = [f"{name}: images resized to {size}x{size}"]
    layout = _scan(cfg, classes, notes)
    decoded = _decode_layout(layout, size, notes, cfg.interpolation or "bilinear")
    grayscale = _choose_grayscale(cfg.grayscale, default_grayscale, list(decoded.values()))
    sets = {
        key: ImageSet(_to_luma(d.images) if grayscale else d.images, d.labels)
        for key, d in decoded.items()
    }
    channels = 1 if grayscale else 3
    if normalise:
        mean, std = _channel_stats([sets["train"].images, sets["unlabeled"].images])
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    return RawDataset(
        name=name,
        train=sets["train"],
        test=sets.get("test"),
        val=sets.get("val"),
        extra_unlabeled=sets["unlabeled"],
        class_names=layout.classes,
        mean=mean,
        std=std,
        hflip=True,
        notes=notes,
        all_train_labeled=True,
    )


def _choose_grayscale(forced: bool | None, default: bool | None, decoded: list[_Decoded]) -> bool:
    if forced is not None:
        return forced
    if default is not None:
        return default
    return all(bool(d.gray.all()) for d in decoded)


@register_dataset("imagefolder")
def load_imagefolder(cfg: DataConfig) -> RawDataset:
    """Your own images: class subfolders in ``data.labeled_dir`` plus ``data.unlabeled_dir``."""
    return load_image_folders(cfg, "imagefolder")


@register_dataset("tmed2")
def load_tmed2(cfg: DataConfig) -> RawDataset:
    """TMED-2 view classification (PLAX, PSAX, A4C, A2C) from class folders.

    112 px grayscale echocardiograms replicated to 3 channels and fed un-normalised (mean 0,
    std 1), as in the InterLUDE TMED experiments; class-weighted CE is `data.class_weighted_loss`.
    """
    return load_image_folders(
        cfg, "tmed2", classes=TMED2_CLASSES, default_resolution=TMED2_RESOLUTION,
        default_grayscale=False, normalise=False,
    )
