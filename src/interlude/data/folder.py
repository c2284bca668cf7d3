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

Unreadable files are skipped with a warning and counted in the dataset notes, so one bad JPEG
does not cost a run; an empty class folder or a class unknown to ``labeled_dir`` is an error,
because it means the folders are not what the user thinks they are.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
    """Images of one folder as RGB ``(N, 3, S, S)``, whether each file was grayscale, and the
    files that could not be read (path, reason)."""

    images: np.ndarray
    labels: np.ndarray
    gray: np.ndarray
    skipped: list[tuple[Path, str]]


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
def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of any PIL image; 16-bit/float grayscale is scaled to 8 bits instead of clipped."""
    if img.mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        if values.size and values.max() > 255:
            values = values * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    return img.convert("RGB")


def decode_image(path: Path, size: int | tuple[int, int]) -> tuple[np.ndarray, bool]:
    """One file as RGB uint8 ``(3, H, W)`` (``size`` = side, or (height, width)) and whether it is
    grayscale (by mode or by identical channels, e.g. an X-ray saved as RGB). Raises
    OSError/ValueError if unreadable."""
    height, width = (size, size) if isinstance(size, int) else size
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)  # phone photos: apply the stored rotation
        gray_mode = img.mode in _GRAY_MODES
        rgb = _to_rgb(img)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    gray = gray_mode or bool((array[0] == array[1]).all() and (array[1] == array[2]).all())
    return array, gray


def _try_decode(path: Path, size: int) -> tuple[np.ndarray, bool] | str:
    try:
        return decode_image(path, size)
    except Exception as exc:  # PIL fails on damaged files in many ways: skip them all
        return f"{type(exc).__name__}: {exc}"


def _decode_files(files: list[Path], labels: list[int], size: int) -> _Decoded:
    """Decode in threads (PIL releases the GIL), keeping file order."""
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    gray = np.zeros(len(files), dtype=bool)
    ok = np.zeros(len(files), dtype=bool)
    skipped: list[tuple[Path, str]] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for i, result in enumerate(pool.map(lambda p: _try_decode(p, size), files)):
            if isinstance(result, str):
                skipped.append((files[i], result))
            else:
                images[i], gray[i], ok[i] = result[0], result[1], True
    keep = np.flatnonzero(ok)
    return _Decoded(images[keep], np.asarray(labels, dtype=np.int64)[keep], gray[keep], skipped)


def _decode_classes(files: dict[str, list[Path]], classes: list[str], size: int) -> _Decoded:
    paths = [p for c in classes for p in files.get(c, [])]
    labels = [i for i, c in enumerate(classes) for _ in files.get(c, [])]
    return _decode_files(paths, labels, size)


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


def _decode_layout(layout: _Layout, size: int, notes: list[str]) -> dict[str, _Decoded]:
    """Decode every folder: ``train`` (labeled), ``unlabeled`` and optional ``val``/``test``."""
    labeled_dir, labeled_files = layout.labeled
    decoded = {"train": _decode_classes(labeled_files, layout.classes, size)}
    _report_skipped(decoded["train"], labeled_dir, notes)
    _check_every_class_readable(decoded["train"], layout.classes, labeled_dir)
    unlabeled_dir, unlabeled_files = layout.unlabeled
    decoded["unlabeled"] = _decode_files(
        unlabeled_files, [UNLABELED] * len(unlabeled_files), size
    )
    _report_skipped(decoded["unlabeled"], unlabeled_dir, notes)
    if len(decoded["unlabeled"].images) == 0:
        raise DataError(f"no readable image in data.unlabeled_dir={unlabeled_dir}")
    for key, (root, found) in layout.labeled_extras.items():
        decoded[key] = _decode_classes(found, layout.classes, size)
        _report_skipped(decoded[key], root, notes)
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
    decoded = _decode_layout(layout, size, notes)
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
