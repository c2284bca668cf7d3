"""Labeled, unlabeled and test images from different datasets (domain shift).

``data.unlabeled_from`` names a dataset whose whole training pool becomes the unlabeled pool (the
labeled and validation splits are still drawn from ``data.name``'s pool, whose remainder is then
not used); ``data.test_from`` names a dataset whose test set replaces ``data.name``'s. Each named
dataset is loaded once and converted to the labeled dataset's image geometry:

* size: ``data.resolution`` when set, else the labeled dataset's native size, resized with
  ``data.interpolation`` (antialiased, as every resize at load time);
* channels: grey -> RGB repeats the grey plane three times; RGB -> grey takes the ITU-R BT.601
  luma ``Y = 0.299 R + 0.587 G + 0.114 B`` rounded to the nearest integer (what PIL's ``L`` mode
  and OpenCV's ``COLOR_RGB2GRAY`` compute).

Classes are matched by index, so both datasets must have the same number of classes (a run with
different class names logs a warning: check that index ``k`` means the same class in both).
Normalisation keeps the labeled dataset's mean/std (or ``data.mean``/``data.std``): a model has
one input normalisation, the one its checkpoint and predictions use, and statistics of the
unlabeled or test domain would hand the model part of the shift for free.

A disk-backed part (STL-10's unlabeled split, SVHN's extra, an image folder) is used as it is
when the loader already produced it at the run's size and channels (loaders convert their cache
to ``data.resolution``); converting it here would read it whole into memory, so that is refused.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from interlude.config import DataConfig, replaced
from interlude.data.base import ImageSet, RawDataset
from interlude.data.registry import load_raw
from interlude.data.rows import ImageRows, as_rows
from interlude.data.splits import Sources, concat_sets
from interlude.data.transforms import resize_images
from interlude.errors import DataError

log = logging.getLogger("interlude")

LUMA_601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B
_CHUNK = 4096  # rows converted at a time


def run_sources(cfg: DataConfig) -> tuple[str, str, str]:
    """(labeled, unlabeled, test) dataset names of a run; unset keys mean ``data.name``."""
    return cfg.name, cfg.unlabeled_from or cfg.name, cfg.test_from or cfg.name


def is_mixed(cfg: DataConfig) -> bool:
    """True when the unlabeled pool or the test set comes from another dataset."""
    return len(set(run_sources(cfg))) > 1


def to_channels(images: np.ndarray | ImageRows, channels: int) -> np.ndarray | ImageRows:
    """uint8 ``(N, C, H, W)`` images with ``channels`` channels: 1 -> 3 repeats the grey plane,
    3 -> 1 is the BT.601 luma rounded to the nearest integer. Converted by chunks of rows."""
    rows = as_rows(images)
    have = rows.shape[1]
    if have == channels:
        return images
    if (have, channels) not in ((1, 3), (3, 1)):
        raise DataError(f"cannot convert {have}-channel images to {channels} channels (1 or 3 only)")
    out = np.empty((len(rows), channels, *rows.shape[2:]), dtype=np.uint8)
    weights = np.asarray(LUMA_601, dtype=np.float64).reshape(1, 3, 1, 1)
    start = 0
    for chunk in rows.chunks(_CHUNK):
        if channels == 3:
            converted = np.repeat(chunk, 3, axis=1)
        else:
            luma = np.floor((chunk.astype(np.float64) * weights).sum(axis=1, keepdims=True) + 0.5)
            converted = np.clip(luma, 0, 255).astype(np.uint8)
        out[start : start + len(chunk)] = converted
        start += len(chunk)
    return out


def convert_set(images: ImageSet | None, shape: tuple[int, int, int], interpolation: str,
                where: str) -> ImageSet | None:
    """``images`` at ``shape`` (C, H, W): resized, then channel-matched."""
    if images is None or images.shape == shape:
        return images
    if images.images.on_disk:
        raise DataError(
            f"{where}: {len(images)} images kept on disk at {images.shape} would have to be "
            f"converted to {shape} in memory; mixing datasets converts in-memory sets only (set "
            "data.resolution to the pool's size, or use a dataset with the same channels)"
        )
    channels, height, width = shape
    resized = resize_images(images.images, (height, width), interpolation=interpolation)
    return ImageSet(to_channels(resized, channels), images.labels)


def load_source(cfg: DataConfig, key: str, name: str, labeled: RawDataset) -> RawDataset:
    """Load dataset ``name`` (named by ``data.<key>``, a registered dataset: the config checks
    it) at the labeled dataset's geometry."""
    shape = labeled.train.shape
    square = shape[1] if shape[1] == shape[2] else None
    other_cfg = replaced(  # disk-backed parts are then cached at the run's size
        cfg, name=name, resolution=cfg.resolution or square, labeled_classes=None,
        outlier_ratio=0.0, split_file=None, labels_file=None, unlabeled_from=None, test_from=None)
    raw = load_raw(other_cfg)
    if raw.num_classes != labeled.num_classes:
        raise DataError(
            f"data.{key}={name} has {raw.num_classes} classes but {labeled.name} has "
            f"{labeled.num_classes}; mixed datasets must share their classes (same count, "
            "matched by index)")
    if list(raw.class_names) != list(labeled.class_names):
        log.warning("data.%s=%s: class names differ from %s's (%s vs %s); classes are matched "
                    "by index", key, name, labeled.name, ", ".join(raw.class_names[:5]),
                    ", ".join(labeled.class_names[:5]))
    filter_ = cfg.interpolation or "bilinear"
    where = f"data.{key}={name}"
    return dataclasses.replace(
        raw,
        train=convert_set(raw.train, shape, filter_, where),
        test=convert_set(raw.test, shape, filter_, where),
        extra_unlabeled=convert_set(raw.extra_unlabeled, shape, filter_, where),
        val=None,
    )


def unlabeled_pool(raw: RawDataset) -> ImageSet:
    """A dataset's training pool with its extra unlabeled images: all of it unlabeled for the
    run (labels kept on the rows for diagnostics, as the usual unlabeled pool keeps them)."""
    if raw.extra_unlabeled is not None and len(raw.extra_unlabeled):
        return concat_sets(raw.train, raw.extra_unlabeled)
    return raw.train


def mixed_sources(raw: RawDataset, cfg: DataConfig) -> tuple[RawDataset, Sources]:
    """``raw`` (the labeled dataset, already at the run's size) with its test set replaced when
    ``data.test_from`` is set, and the :class:`Sources` record for the split."""
    labeled_name, unlabeled_name, test_name = run_sources(cfg)
    loaded: dict[str, RawDataset] = {labeled_name: raw}
    for key, name in (("unlabeled_from", unlabeled_name), ("test_from", test_name)):
        if name not in loaded:  # each source loaded once
            loaded[name] = load_source(cfg, key, name, raw)
    pool = None if unlabeled_name == labeled_name else unlabeled_pool(loaded[unlabeled_name])
    if test_name != labeled_name:
        test = loaded[test_name].test
        if test is None:
            raise DataError(f"data.test_from={test_name}: that dataset has no test set; name one "
                            "with a test set (for an image folder, data.test_dir)")
        raw = dataclasses.replace(raw, test=test)
    log.info("data: labeled from %s, unlabeled from %s (%s images), test from %s",
             labeled_name, unlabeled_name, len(pool) if pool is not None else "pool remainder",
             test_name)
    return raw, Sources(labeled_name, unlabeled_name, test_name, pool)
