"""Your own images: ``imagefolder`` (class subfolders) and ``tmed2`` (echocardiogram views).

Layout::

    labeled_dir/<class>/<image>      every image here is used as a labeled example
    unlabeled_dir/**/<image>         any nesting; labels, if any, are ignored
    val_dir/<class>/<image>          optional, same class names as labeled_dir
    test_dir/<class>/<image>         optional, same class names as labeled_dir

Every image is decoded once into uint8: converted to RGB, then resized to a square of
``data.resolution`` pixels (default 32 for ``imagefolder``, 112 for ``tmed2``; the aspect ratio
is not kept, nothing is cropped). With ``data.cache=true`` (default) each folder is decoded once
into the on-disk image cache (:mod:`interlude.data.cache`) and later runs read it, rows on demand;
a file added, removed or changed makes that folder decode again. Channels: ``data.grayscale``
forces 1 (True) or 3 (False); by default images are stored with 1 channel when *every* file is
grayscale, else 3. 16-bit, 12-bit (TIFF) and float images are brought to 8 bits by a fixed rule of
their mode (:mod:`interlude.data.decode`); one log line per dataset summarises the depths found.

Unreadable files are skipped with a warning and counted in the dataset notes, so one bad JPEG
does not cost a run (with the cache they are tried once, when the cache is built, and reported
from its metadata afterwards); an empty class folder or a class unknown to ``labeled_dir`` is an
error, because it means the folders are not what the user thinks they are.

Normalisation statistics (imagefolder) are the exact per-channel mean and std over the labeled
and unlabeled images, summed while decoding (cached with the images), never by reading a cached
pool back.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interlude.config import DataConfig
from interlude.data.base import UNLABELED, ImageSet, RawDataset
from interlude.data.cache import cache_root, stat_signature
from interlude.data.decode import DepthSummary, decode_image
from interlude.data.folder_sets import FolderSet, as_luma, decode_set
from interlude.data.registry import register_dataset
from interlude.errors import DataError
from interlude.files import text_cell

__all__ = ["DEFAULT_RESOLUTION", "IMAGE_SUFFIXES", "TMED2_CLASSES", "class_folders",
           "decode_image", "image_files", "load_image_folders"]

log = logging.getLogger("interlude")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_RESOLUTION = 32
TMED2_CLASSES = ["PLAX", "PSAX", "A4C", "A2C"]
TMED2_RESOLUTION = 112
_MAX_12_BIT = 4095


# --------------------------------------------------------------------------- finding files
def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


@dataclass
class ImageFiles:
    """The image files under ``root``: their paths relative to it ("/"-separated, in the order
    sorted ``Path`` objects have) and each file's :func:`~interlude.data.cache.stat_signature`
    (what the image cache's key is made of). Plain strings: a pool of 200k files costs megabytes, not the
    hundreds a list of ``Path`` objects would."""

    root: Path
    names: list[str]
    signatures: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    """Folders and files the scan could not read (path relative to ``root``, reason): reported
    with the data, never skipped in silence."""

    def __len__(self) -> int:
        return len(self.names)

    def paths(self) -> list[Path]:
        return [self.root / name for name in self.names]


def scan_images(folder: Path) -> ImageFiles:
    """Image files under ``folder`` at any depth (hidden files and folders, ``__MACOSX`` and
    symlinked folders skipped; symlinked files kept), sorted so the pool order is reproducible.
    One ``os.scandir`` walk and one ``stat`` per file. What cannot be read (a folder without
    permission, a path longer than the system allows) is listed in ``unreadable``."""
    found: list[tuple[tuple[str, ...], str]] = []
    unreadable: list[tuple[str, str]] = []
    stack: list[tuple[str, tuple[str, ...]]] = [(str(folder), ())]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except OSError as exc:
            unreadable.append(("/".join(prefix) or ".", _reason(exc)))
            continue
        for entry in listed:
            if _hidden(entry.name):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, (*prefix, entry.name)))
                elif (os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
                      and entry.is_file()):
                    found.append(((*prefix, entry.name), stat_signature(entry.stat())))
            except OSError as exc:  # removed while scanning, a name too long to stat, ...
                unreadable.append(("/".join((*prefix, entry.name)), _reason(exc)))
    found.sort(key=lambda item: item[0])  # component-wise, as Path objects compare
    return ImageFiles(folder, ["/".join(parts) for parts, _ in found], [s for _, s in found],
                      sorted(unreadable))


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` at any depth, sorted so the pool order is reproducible."""
    return scan_images(folder).paths()


def _require_dir(path: str | None, key: str, hint: str) -> Path:
    if not path:
        raise DataError(f"{key} is not set: {hint}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{key}={path}: folder not found ({folder.resolve()})")
    return folder


def class_folders(root: Path, key: str) -> dict[str, ImageFiles]:
    """``{class name: image files}`` for each subfolder of ``root``."""
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not _hidden(d.name))
    if not subdirs:
        raise DataError(
            f"{key}={root} has no subfolders: put each class's images in their own folder, "
            f"e.g. {root}/cat/img1.png and {root}/dog/img2.jpg"
        )
    files = {d.name: scan_images(d) for d in subdirs}
    empty = [name for name, found in files.items() if not found]
    if empty:
        why = "; ".join(f"{name}: {found.unreadable[0][1]}" for name, found in files.items()
                        if not found and found.unreadable)
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {key}={root} hold no images "
            f"({'/'.join(sorted(IMAGE_SUFFIXES))})" + (f" that could be read ({why})" if why else "")
            + "; add images or remove the folder"
        )
    return files


def _warn_loose_images(root: Path, notes: list[str]) -> None:
    """Images next to the class folders belong to no class; say so rather than drop them quietly."""
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        _note_warning(notes, f"{len(loose)} image(s) directly in {root} are ignored: labeled "
                             "images must be inside a class subfolder")


def _class_order(found: dict[str, ImageFiles], fixed: list[str] | None, root: Path) -> list[str]:
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


def _check_known_classes(found: dict[str, ImageFiles], classes: list[str], key: str,
                         root: Path, labeled_dir: Path) -> None:
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{key}={root} has class folder(s) {', '.join(unknown)} that are not in "
            f"data.labeled_dir={labeled_dir} (classes: {', '.join(classes)}); the class folders "
            "must use the same names"
        )


# --------------------------------------------------------------------------- bookkeeping
def _note_warning(notes: list[str], message: str) -> None:
    log.warning(message)
    notes.append(message)


def _report_skipped(decoded: FolderSet, notes: list[str]) -> None:
    """Unreadable files: a warning when they were just tried, an info line when the cache
    remembered them (they are not tried again until the folder changes)."""
    if not decoded.skipped:
        return
    examples = "; ".join(f"{path} ({why})" for path, why in decoded.skipped[:3])
    message = f"skipped {len(decoded.skipped)} unreadable image(s) in {decoded.root}: {examples}"
    notes.append(message)
    if decoded.built:
        log.warning(message)
    else:
        log.info("%s (found when the image cache was built)", message)


def _report_depths(decoded: list[FolderSet], notes: list[str]) -> None:
    """One summary per dataset of the bit depths found and how they were scaled (logged; also a
    dataset note when anything was not 8-bit), plus warnings for clipped values and for 16-bit
    files that look like 12-bit data."""
    depths = DepthSummary()
    for one in decoded:
        depths = depths + one.depths
    if not depths.count:
        return
    summary = f"decoded {depths.count} images: " + ", ".join(
        f"{n} {kind}" for kind, n in Counter(depths.kinds).most_common()
    )
    log.info(summary)
    if depths.wide:
        notes.append(summary)
    if depths.clipped:
        _note_warning(notes, "values outside the decoding range were clipped in "
                             + ", ".join(f"{n} {kind}" for kind, n in
                                         Counter(depths.clipped).most_common())
                             + " image(s): 16-bit and 'I' files are read as 0..65535, float "
                             "files as 0..1; rescale such files to that range first")
    if depths.peak16 is not None and depths.peak16 <= _MAX_12_BIT:
        _note_warning(notes, f"no 16-bit image exceeds {_MAX_12_BIT}: if these are 12-bit data "
                             "saved in 16 bits they are scaled by 65535 like any 16-bit file "
                             "and decode dark (at most 16 of 255); save them as 12-bit TIFF or "
                             "stretch them to the 16-bit range")


def _check_every_class_readable(decoded: FolderSet, classes: list[str], root: Path) -> None:
    counts = np.bincount(decoded.labels, minlength=len(classes))
    dead = [classes[c] for c in np.flatnonzero(counts == 0)]
    if dead:
        raise DataError(f"no readable image in class folder(s) {', '.join(dead)} of {root}")


# --------------------------------------------------------------------------- loader
@dataclass
class _Layout:
    """The files of every folder, checked for consistency before anything is decoded."""

    classes: list[str]
    labeled: tuple[Path, dict[str, ImageFiles]]
    unlabeled: ImageFiles
    labeled_extras: dict[str, tuple[Path, dict[str, ImageFiles]]]  # "val" / "test"


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
    extras: dict[str, tuple[Path, dict[str, ImageFiles]]] = {}
    for key, path in (("val", cfg.val_dir), ("test", cfg.test_dir)):
        if path:
            root = _require_dir(path, f"data.{key}_dir", "")
            found = class_folders(root, f"data.{key}_dir")
            _warn_loose_images(root, notes)
            _check_known_classes(found, classes, f"data.{key}_dir", root, labeled_dir)
            extras[key] = (root, found)
    unlabeled = scan_images(unlabeled_dir)
    if not unlabeled:
        why = f" that could be read ({unlabeled.unreadable[0][1]})" if unlabeled.unreadable else ""
        raise DataError(f"data.unlabeled_dir={unlabeled_dir} holds no images "
                        f"({'/'.join(sorted(IMAGE_SUFFIXES))}){why}")
    _report_unreadable([*((labeled_dir / c, f) for c, f in labeled.items()),
                        *((root / c, f) for root, found in extras.values()
                          for c, f in found.items()),
                        (unlabeled_dir, unlabeled)], notes)
    return _Layout(classes, (labeled_dir, labeled), unlabeled, extras)


def _report_unreadable(scanned: list[tuple[Path, ImageFiles]], notes: list[str]) -> None:
    """Folders and files the scan could not read: one warning (and dataset note) with the count,
    the reasons and a few examples, as for files that could not be decoded."""
    problems = [(folder / rel if rel != "." else folder, why) for folder, files in scanned
                for rel, why in files.unreadable]
    if not problems:
        return
    reasons = Counter(why for _, why in problems)
    examples = "; ".join(f"{text_cell(path)} ({why})" for path, why in problems[:3])
    _note_warning(notes, f"skipped {len(problems)} folder(s)/file(s) that could not be read ("
                         + ", ".join(f"{n} {why}" for why, n in reasons.most_common())
                         + f"): {examples}")


def _classes_set(root: Path, found: dict[str, ImageFiles], classes: list[str]) -> tuple[
        ImageFiles, list[int]]:
    """The files of every class folder as one set under ``root``, in class order, and labels."""
    present = [(i, found[c]) for i, c in enumerate(classes) if c in found]  # val/test: some
    names = [f"{files.root.name}/{n}" for _, files in present for n in files.names]
    signatures = [s for _, files in present for s in files.signatures]
    labels = [i for i, files in present for _ in files.names]
    return ImageFiles(root, names, signatures), labels


def _decode_layout(layout: _Layout, size: int, name: str, cfg: DataConfig,
                   notes: list[str]) -> dict[str, FolderSet]:
    """Decode (or read from the cache) every folder: ``train`` (labeled), ``unlabeled`` and
    optional ``val``/``test``."""
    cache = cache_root(cfg.cache, cfg.cache_dir)

    def decode(role: str, files: ImageFiles, labels: list[int]) -> FolderSet:
        return decode_set(files.root, files.names, files.signatures, labels, size, role, name,
                          cache, cfg.decode_workers, cfg.interpolation or "bilinear")

    labeled_dir, labeled_files = layout.labeled
    decoded = {"train": decode("labeled", *_classes_set(labeled_dir, labeled_files,
                                                         layout.classes))}
    _report_skipped(decoded["train"], notes)
    _check_every_class_readable(decoded["train"], layout.classes, labeled_dir)
    unlabeled = layout.unlabeled
    decoded["unlabeled"] = decode("unlabeled", unlabeled, [UNLABELED] * len(unlabeled))
    _report_skipped(decoded["unlabeled"], notes)
    if len(decoded["unlabeled"].images) == 0:
        raise DataError(f"no readable image in data.unlabeled_dir={unlabeled.root}")
    for key, (root, found) in layout.labeled_extras.items():
        decoded[key] = decode(key, *_classes_set(root, found, layout.classes))
        _report_skipped(decoded[key], notes)
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
    decoded = _decode_layout(layout, size, name, cfg, notes)
    grayscale = _choose_grayscale(cfg.grayscale, default_grayscale, list(decoded.values()))
    cache = cache_root(cfg.cache, cfg.cache_dir)
    sets = {
        key: ImageSet(as_luma(d, cache) if grayscale else d.images, d.labels)
        for key, d in decoded.items()
    }
    channels = 1 if grayscale else 3
    if normalise:  # exact sums kept while decoding: a cached pool is not read back for them
        mean, std = (decoded["train"].sums + decoded["unlabeled"].sums).mean_std(luma=grayscale)
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
        extra_unlabeled_files=_kept_files(layout.unlabeled, decoded["unlabeled"]),
    )


def _kept_files(files: ImageFiles, decoded: FolderSet) -> list[str]:
    """The path of each decoded row: the folder's files in order, less those skipped."""
    skipped = {name for name, _ in decoded.skipped}
    return [str(files.root / name) for name in files.names if name not in skipped]


def _choose_grayscale(forced: bool | None, default: bool | None,
                      decoded: list[FolderSet]) -> bool:
    if forced is not None:
        return forced
    if default is not None:
        return default
    return all(d.gray for d in decoded)


class FolderOptions(DataConfig):
    """Options of datasets read from class folders (imagefolder, tmed2)."""

    labeled_dir: str | None = None
    """Folder of `<class>/<image>` labeled images."""
    unlabeled_dir: str | None = None
    """Folder of unlabeled images (any nesting)."""
    val_dir: str | None = None
    """Optional labeled validation folder (`<class>/<image>`)."""
    test_dir: str | None = None
    """Optional labeled test folder (`<class>/<image>`)."""
    grayscale: bool | None = None
    """Force 1-channel (True) or 3-channel (False) images; None infers from the files."""


@register_dataset("imagefolder", FolderOptions)
def load_imagefolder(cfg: DataConfig) -> RawDataset:
    """Your own images: class subfolders in ``data.labeled_dir`` plus ``data.unlabeled_dir``."""
    return load_image_folders(cfg, "imagefolder")


@register_dataset("tmed2", FolderOptions)
def load_tmed2(cfg: DataConfig) -> RawDataset:
    """TMED-2 view classification (PLAX, PSAX, A4C, A2C) from class folders.

    112 px grayscale echocardiograms replicated to 3 channels and fed un-normalised (mean 0,
    std 1), as in the InterLUDE TMED experiments; class-weighted CE is `data.class_weighted_loss`.
    """
    return load_image_folders(
        cfg, "tmed2", classes=TMED2_CLASSES, default_resolution=TMED2_RESOLUTION,
        default_grayscale=False, normalise=False,
    )
