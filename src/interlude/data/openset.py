"""Open-set semi-supervised learning: unlabeled pools that contain unseen classes.

``data.labeled_classes`` picks the classes that exist for the model (labeled candidates, val and
test keep only these, relabeled ``0..k-1`` in the given order). ``data.outlier_ratio`` then adds
images of the *other* classes to the unlabeled pool so that they make up that fraction of it; in
real data the unlabeled images are rarely restricted to the classes someone labeled.

The unlabeled pool the ratio refers to is what :func:`~interlude.data.splits.build_ssl_data` will
produce: the in-class remainder of the training pool (after ``labels_per_class`` and
``val_per_class`` per class are drawn) plus the dataset's own extra unlabeled images (e.g.
STL-10's unlabeled split, an image folder's ``unlabeled_dir``), which are counted as
in-distribution because their classes are unknown. Outliers get label ``-1`` and are added to
``extra_unlabeled``, so they can never be drawn as labeled.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from interlude.config import DataConfig
from interlude.data.base import UNLABELED, ImageSet, RawDataset
from interlude.data.splits import concat_sets
from interlude.errors import DataError

log = logging.getLogger("interlude")

OPENSET_STREAM = 1  # second word of the seed: outliers do not share the split's random stream


def make_open_set(raw: RawDataset, cfg: DataConfig) -> RawDataset:
    """Return ``raw`` restricted to ``cfg.labeled_classes`` with outliers in the unlabeled pool."""
    if cfg.labeled_classes is None:
        if cfg.outlier_ratio > 0:
            raise DataError(
                "data.outlier_ratio needs data.labeled_classes: the outliers are drawn from the "
                f"classes left out of it (e.g. data.labeled_classes=[0,1,2,3,4,5] for {raw.name})"
            )
        return raw
    kept = validate_labeled_classes(cfg.labeled_classes, raw)
    remap = np.full(raw.num_classes, UNLABELED, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    labels = raw.train.labels
    is_kept = np.isin(labels, kept)
    in_class = np.flatnonzero(is_kept)
    outside = np.flatnonzero(~is_kept & (labels != UNLABELED))

    extra = _relabel(raw.extra_unlabeled, remap)
    n_extra = len(extra) if extra is not None else 0
    n_in = _expected_inlier_pool(len(in_class), len(kept), raw, cfg, n_extra)
    limit = _inlier_limit(len(outside), n_in, n_extra, cfg, raw.name)
    if limit is not None:  # the remainder is thinned to `limit` once the split is drawn
        n_in = limit + n_extra
    outliers = _draw_outliers(outside, n_in, cfg, raw.name)
    notes = list(raw.notes)
    notes.append(_describe(raw, kept, outliers, n_in, cfg.outlier_ratio))
    log.info(notes[-1])
    if len(outliers):
        outlier_set = ImageSet(
            raw.train.images.read(outliers),
            np.full(len(outliers), UNLABELED, dtype=np.int64),
        )
        extra = outlier_set if extra is None else concat_sets(extra, outlier_set)
    return dataclasses.replace(
        raw,
        train=ImageSet(raw.train.subset(in_class).images, remap[labels[in_class]]),
        test=_keep_classes(raw.test, kept, remap),
        val=_keep_classes(raw.val, kept, remap),
        extra_unlabeled=extra,
        class_names=[raw.class_names[c] for c in kept],
        notes=notes,
        inlier_unlabeled_limit=limit,
    )


def validate_labeled_classes(classes: list[int], raw: RawDataset) -> np.ndarray:
    """Check ``data.labeled_classes`` against the dataset: in range, unique, at least two."""
    shown = ", ".join(f"{i}={n}" for i, n in enumerate(raw.class_names[:12]))
    more = ", ..." if raw.num_classes > 12 else ""
    bad = [c for c in classes if not 0 <= c < raw.num_classes]
    if bad:
        raise DataError(
            f"data.labeled_classes: {', '.join(map(str, bad))} not a class index of {raw.name} "
            f"(0..{raw.num_classes - 1}: {shown}{more})"
        )
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise DataError(f"data.labeled_classes lists {', '.join(map(str, duplicates))} twice")
    if len(classes) < 2:
        raise DataError(
            f"data.labeled_classes must name at least 2 classes to classify, got {classes}"
        )
    return np.asarray(classes, dtype=np.int64)


def _relabel(images: ImageSet | None, remap: np.ndarray) -> ImageSet | None:
    """Map known labels to the new indices; labels of dropped classes become unknown."""
    if images is None:
        return None
    labels = images.labels
    new = np.where(labels >= 0, remap[np.clip(labels, 0, None)], UNLABELED)
    return ImageSet(images.images, new)


def _expected_inlier_pool(n_in_class: int, k: int, raw: RawDataset, cfg: DataConfig, n_extra: int) -> int:
    """In-distribution images the unlabeled pool will hold once the split is drawn."""
    taken = n_in_class if raw.all_train_labeled else k * (cfg.labels_per_class + cfg.val_per_class)
    remainder = max(n_in_class - taken, 0)
    return remainder + n_extra


def _inlier_limit(n_outside: int, n_in: int, n_extra: int, cfg: DataConfig, name: str) -> int | None:
    """In-class images the unlabeled remainder of the training pool may keep, or None for all.

    When the other classes hold fewer images than ``outlier_ratio`` asks for next to the whole
    in-class remainder (6 of MNIST's 10 classes cannot make 75% of a pool of the other 4), all
    outliers are used and the in-class remainder is thinned instead, so that the pool holds the
    requested fraction: the ratio is the experiment's variable, the pool size follows from it.
    """
    ratio = cfg.outlier_ratio
    if ratio <= 0 or n_in == 0 or round(n_in * ratio / (1.0 - ratio)) <= n_outside:
        return None
    inliers = int(n_outside * (1.0 - ratio) / ratio)
    if inliers - n_extra < 1:
        raise DataError(
            f"{name}: data.outlier_ratio={ratio} cannot be reached: the other classes hold "
            f"{n_outside} images, too few next to the {n_extra} extra unlabeled images; lower "
            "data.outlier_ratio or keep fewer data.labeled_classes"
        )
    log.info("%s: outlier_ratio=%s with all %d images of the other classes: the in-class "
             "unlabeled images are thinned from %d to %d", name, ratio, n_outside, n_in, inliers)
    return inliers - n_extra


def _draw_outliers(outside: np.ndarray, n_in: int, cfg: DataConfig, name: str) -> np.ndarray:
    """Indices (into the training pool) of the outliers, chosen with ``data_seed``."""
    ratio = cfg.outlier_ratio
    if ratio <= 0:
        return np.zeros(0, dtype=np.int64)
    if n_in == 0:
        raise DataError(
            f"{name}: data.outlier_ratio={ratio} but no in-class unlabeled images remain to mix "
            "the outliers with; lower data.labels_per_class or add unlabeled images"
        )
    wanted = int(round(n_in * ratio / (1.0 - ratio)))  # <= len(outside): see _inlier_limit
    rng = np.random.default_rng([cfg.data_seed, OPENSET_STREAM])
    return np.sort(rng.choice(outside, size=min(wanted, len(outside)), replace=False))


def _keep_classes(images: ImageSet | None, kept: np.ndarray, remap: np.ndarray) -> ImageSet | None:
    if images is None:
        return None
    rows = np.flatnonzero(np.isin(images.labels, kept))
    subset = images.subset(rows)
    return ImageSet(subset.images, remap[subset.labels])


def _describe(
    raw: RawDataset, kept: np.ndarray, outliers: np.ndarray, n_in: int, ratio: float
) -> str:
    names = ", ".join(raw.class_names[c] for c in kept)
    pool = n_in + len(outliers)
    actual = len(outliers) / pool if pool else 0.0
    return (
        f"open set: classes {names} kept; {len(outliers)} outlier images from the other "
        f"{raw.num_classes - len(kept)} classes in an unlabeled pool of about {pool} "
        f"({actual:.1%}, requested {ratio:.1%})"
    )
