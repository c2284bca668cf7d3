"""Class-balanced labeled / validation / unlabeled split, reproducible from ``data_seed``.

The split is a pure function of (training pool labels, labels_per_class, val_per_class,
data_seed), so two runs of different algorithms with the same data seed see the same labels. It is
saved as ``split.json`` beside every run and can be reused with ``data.split_file``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interlude.config import DataConfig
from interlude.data.base import UNLABELED, ImageSet, RawDataset, SSLData
from interlude.data.labels_file import AddedLabels, read_labels_file
from interlude.data.rows import ArrayRows, concat_rows
from interlude.errors import DataError, shown
from interlude.files import parse_json

__all__ = ["Sources", "build_ssl_data", "concat_sets", "draw_split", "inlier_rows", "load_split_file",
           "pool_fingerprint"]

_FINGERPRINT_ROWS = 4096


@dataclass
class Sources:
    """Which dataset gives each part of a run (``data.unlabeled_from``/``data.test_from``).

    ``unlabeled_pool`` is the other dataset's pool (at the run's image geometry) when the
    unlabeled images come from another dataset; None = the labeled pool's remainder.
    """

    labeled: str
    unlabeled: str
    test: str
    unlabeled_pool: ImageSet | None = None

    def names(self) -> dict[str, str]:
        return {"labeled": self.labeled, "unlabeled": self.unlabeled, "test": self.test}


def _plain_sources(dataset: str) -> dict[str, str]:
    return {"labeled": dataset, "unlabeled": dataset, "test": dataset}


def draw_split(
    labels: np.ndarray,
    num_classes: int,
    labels_per_class: int | None,
    val_per_class: int,
    data_seed: int,
    class_names: list[str] | None = None,
) -> dict[str, list[int]]:
    """Pick ``labels_per_class`` labeled and ``val_per_class`` validation indices per class.

    ``labels_per_class=None`` labels every image not held out for validation: used for pools the
    user labeled on purpose (an image folder), where dropping labels would surprise them.
    """
    rng = np.random.default_rng(data_seed)
    labeled: list[int] = []
    val: list[int] = []
    for c in range(num_classes):
        name = class_names[c] if class_names else str(c)
        members = np.flatnonzero(labels == c)
        _check_class_size(name, len(members), labels_per_class, val_per_class)
        needed = len(members) if labels_per_class is None else labels_per_class + val_per_class
        chosen = rng.permutation(members)
        val.extend(chosen[:val_per_class].tolist())
        labeled.extend(chosen[val_per_class:needed].tolist())
    return {"labeled": sorted(labeled), "val": sorted(val)}


def _check_class_size(name: str, size: int, labels_per_class: int | None, val_per_class: int):
    if size == 0:
        raise DataError(
            f"class '{name}' has no images in the training pool; remove it from the "
            "dataset or add images for it"
        )
    if labels_per_class is None and size <= val_per_class:
        raise DataError(
            f"class '{name}' has {size} labeled images, but {val_per_class} per class "
            "are held out for validation and at least one must stay labeled; lower "
            "data.val_per_class or add images"
        )
    if labels_per_class is not None and size < labels_per_class + val_per_class:
        raise DataError(
            f"class '{name}' has {size} images but {labels_per_class} labeled"
            f" + {val_per_class} validation per class were requested; lower "
            "data.labels_per_class / data.val_per_class"
        )


def pool_fingerprint(pool: ImageSet) -> str:
    """A short hash of the training pool's images and labels: a split's indices mean something
    only for the exact pool they were drawn from (same files, same order)."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr(tuple(pool.images.shape)).encode())
    digest.update(np.ascontiguousarray(pool.labels).tobytes())
    for rows in pool.images.chunks(_FINGERPRINT_ROWS):  # by chunks: a pool may be on disk
        digest.update(np.ascontiguousarray(rows).tobytes())
    return digest.hexdigest()


def load_split_file(path: str | Path, pool: ImageSet, dataset: str,
                    sources: Sources | None = None) -> dict[str, list[int]]:
    """Read a ``split.json`` (an earlier run's) and check it fits this dataset's training pool.

    The file is user input: indices must be integers (no floats, booleans or strings), unique,
    inside the pool, and labeled and validation sets must not overlap; a split recorded for
    another dataset, another pool (its fingerprint) or other sources (``data.unlabeled_from``,
    ``data.test_from``) is refused. With an unlabeled pool from another dataset the result also
    holds ``unlabeled``: indices into that pool, checked the same way.
    """
    path = Path(path)
    pool_size = len(pool)

    def refuse(problem: str) -> DataError:
        return DataError(f"{path} {problem} (data.split_file); point it at the split.json of a "
                         "run on this dataset, or leave it unset to draw a split")

    if not path.is_file():
        raise DataError(f"split file not found: {path} (data.split_file)")
    try:
        saved = parse_json(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(f"is not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise refuse("is not a split file written by interlude (needs 'labeled' and 'val')")
    split: dict[str, list[int]] = {}
    for key in ("labeled", "val"):
        split[key] = _indices(saved, key, pool_size, "the training pool", refuse)
    overlap = set(split["labeled"]) & set(split["val"])
    if overlap:
        raise refuse(f"puts {len(overlap)} image(s) in both 'labeled' and 'val' "
                     f"(e.g. index {min(overlap)})")
    if not split["labeled"]:
        raise refuse("has no labeled index")
    if "dataset" in saved and saved["dataset"] != dataset:
        raise refuse(f"was made for dataset {shown(saved['dataset'])}, not {shown(dataset)}")
    _check_sources(saved, dataset, sources, refuse)
    if saved.get("train_pool_size", pool_size) != pool_size:
        raise refuse(f"was made for a training pool of {saved['train_pool_size']} images, but "
                     f"this one has {pool_size}")
    if "pool_fingerprint" in saved and saved["pool_fingerprint"] != pool_fingerprint(pool):
        raise refuse("was made for another set of files (the training pool's fingerprint "
                     "differs: images added, removed, changed or reordered)")
    if sources is not None and sources.unlabeled_pool is not None:
        split["unlabeled"] = _foreign_indices(saved, sources.unlabeled_pool, refuse)
    return split


def _check_sources(saved: dict, dataset: str, sources: Sources | None, refuse) -> None:
    """A split made for other sources would silently train on other images: refuse it."""
    expected = sources.names() if sources is not None else _plain_sources(dataset)
    recorded = saved.get("sources", _plain_sources(saved.get("dataset", dataset)))
    if recorded != expected:
        def show(names: object) -> str:
            if not isinstance(names, dict):
                return shown(names)
            return ", ".join(f"{part}={shown(names.get(part))}" for part in expected)

        raise refuse(f"was made for sources {show(recorded)}, not {show(expected)}")


def _foreign_indices(saved: dict, pool: ImageSet, refuse) -> list[int]:
    """The recorded rows of an unlabeled pool from another dataset, checked against that pool."""
    if saved.get("unlabeled_pool_size") != len(pool):
        raise refuse(f"was made for an unlabeled pool of {shown(saved.get('unlabeled_pool_size'))}"
                     f" images, but this one has {len(pool)}")
    if saved.get("unlabeled_pool_fingerprint") != pool_fingerprint(pool):
        raise refuse("was made for another unlabeled pool (its fingerprint differs: images "
                      "added, removed, changed, reordered or converted to another size)")
    values = _indices(saved, "unlabeled", len(pool), "the unlabeled pool", refuse)
    if not values:
        raise refuse("has no unlabeled index")
    return values


def _indices(saved: dict, key: str, size: int, what: str, refuse) -> list[int]:
    """``saved[key]`` as unique integer indices in ``0..size-1`` (the file is user input)."""
    values = saved.get(key)
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise refuse(f"needs '{key}' as a list of integer indices")
    if len(set(values)) != len(values):
        raise refuse(f"lists an index twice in '{key}'")
    if values and (min(values) < 0 or max(values) >= size):
        raise refuse(f"holds '{key}' indices outside {what} of {size} images")
    return values


THINNING_STREAM = 2  # second word of the seed: thinning does not share the split's stream


def inlier_rows(rows: np.ndarray, limit: int | None, data_seed: int) -> np.ndarray:
    """``rows`` (the in-class remainder), or ``limit`` of them drawn with ``data_seed`` (open
    set: see :attr:`RawDataset.inlier_unlabeled_limit`); the same split gives the same rows."""
    if limit is None or len(rows) <= limit:
        return rows
    rng = np.random.default_rng([data_seed, THINNING_STREAM])
    return np.sort(rng.choice(rows, size=limit, replace=False))


def build_ssl_data(raw: RawDataset, cfg: DataConfig, sources: Sources | None = None) -> SSLData:
    """Turn a loader's :class:`RawDataset` into the labeled / unlabeled / val / test sets.

    ``sources`` (``data.unlabeled_from``/``data.test_from``): with an unlabeled pool from
    another dataset, the unlabeled set is that pool (all of it, or the rows a reused split file
    lists) instead of this pool's remainder; the sources are recorded in the split.
    """
    pool = raw.train
    known = pool.labels[pool.labels != UNLABELED]
    if len(known) and (known.min() < 0 or known.max() >= raw.num_classes):
        raise DataError(
            f"{raw.name}: labels must be in 0..{raw.num_classes - 1}, found "
            f"{int(known.min())}..{int(known.max())}"
        )
    foreign = sources.unlabeled_pool if sources is not None else None
    if cfg.split_file:
        split = load_split_file(cfg.split_file, pool, raw.name, sources)
    else:
        split = draw_split(
            pool.labels, raw.num_classes,
            None if raw.all_train_labeled else cfg.labels_per_class, cfg.val_per_class,
            cfg.data_seed, raw.class_names,
        )
        if foreign is not None:
            split["unlabeled"] = list(range(len(foreign)))
    added = read_labels_file(cfg.labels_file, raw.class_names) if cfg.labels_file else None
    if added is not None:
        split = _with_added_indices(split, added, len(pool), cfg.labels_file)
    labeled = pool.subset(np.array(split["labeled"], dtype=np.int64))
    if added is not None:
        labeled = _with_added_labels(labeled, split["labeled"], added, cfg.interpolation or "bilinear")
    missing = sorted(set(range(raw.num_classes)) - set(labeled.labels.tolist()))
    if missing:
        names = ", ".join(raw.class_names[c] for c in missing)
        raise DataError(
            f"the labeled split has no image of class(es) {names}; every class needs at least "
            "one label (check data.split_file or the labeled folder)"
        )
    taken = np.zeros(len(pool), dtype=bool)
    taken[split["labeled"]] = True
    taken[split["val"]] = True
    if foreign is not None:
        unlabeled = _rows(foreign, split["unlabeled"])
    else:
        unlabeled = pool.subset(inlier_rows(np.flatnonzero(~taken), raw.inlier_unlabeled_limit,
                                             cfg.data_seed))
        if raw.extra_unlabeled is not None and len(raw.extra_unlabeled):
            unlabeled = concat_sets(unlabeled, raw.extra_unlabeled)
    if len(unlabeled) == 0:
        raise DataError(
            f"{raw.name}: no unlabeled images remain after the split; semi-supervised training "
            "needs an unlabeled pool (lower data.labels_per_class or add unlabeled images)"
        )
    val = pool.subset(np.array(split["val"], dtype=np.int64)) if split["val"] else raw.val
    mean, std = normalisation(raw, cfg)
    record = {
        "dataset": raw.name,
        "data_seed": cfg.data_seed,
        "labels_per_class": cfg.labels_per_class,
        "val_per_class": cfg.val_per_class,
        "train_pool_size": len(pool),
        "pool_fingerprint": pool_fingerprint(pool),
        "labeled": split["labeled"],
        "val": split["val"],
    }
    if raw.all_train_labeled:
        record["all_train_labeled"] = True
    if raw.inlier_unlabeled_limit is not None:
        record["inlier_unlabeled_limit"] = raw.inlier_unlabeled_limit
    if sources is not None:
        record["sources"] = sources.names()
        if foreign is not None:
            record["unlabeled_pool_size"] = len(foreign)
            record["unlabeled_pool_fingerprint"] = pool_fingerprint(foreign)
            record["unlabeled"] = split["unlabeled"]
    if added is not None:
        record["labels_file"] = str(cfg.labels_file)
        record["labels_file_images"] = len(added.files)
    return SSLData(
        labeled=labeled,
        unlabeled=unlabeled,
        test=raw.test,
        val=val,
        class_names=list(raw.class_names),
        mean=mean,
        std=std,
        hflip=raw.hflip if cfg.hflip is None else cfg.hflip,
        split=record,
        interpolation=cfg.interpolation or "bilinear",
        extra_unlabeled_files=raw.extra_unlabeled_files,
    )


def _rows(images: ImageSet, rows: list[int]) -> ImageSet:
    """``images`` itself when ``rows`` is all of it in order (a disk-backed pool stays on disk),
    else those rows."""
    if rows == list(range(len(images))):
        return images
    return images.subset(np.asarray(rows, dtype=np.int64))


def _with_added_indices(split: dict[str, list[int]], added: AddedLabels, pool_size: int,
                        source: str) -> dict[str, list[int]]:
    """The split with the labels file's training-pool rows moved into the labeled set."""
    outside = [i for i in added.by_index if i >= pool_size]
    if outside:
        raise DataError(
            f"data.labels_file={source}: index {outside[0]} is outside the training pool of "
            f"{pool_size} images (rows of an unlabeled folder are labeled by their file)")
    held_out = sorted(set(added.by_index) & set(split["val"]))
    if held_out:
        raise DataError(f"data.labels_file={source}: index {held_out[0]} is a validation image; "
                        "remove its row or draw the split without validation")
    return {**split, "labeled": sorted(set(split["labeled"]) | set(added.by_index))}


def _with_added_labels(labeled: ImageSet, rows: list[int], added: AddedLabels,
                       interpolation: str) -> ImageSet:
    """``labeled`` with the labels file's classes on its rows and its image files appended."""
    from interlude.inputs import read_images

    labels = labeled.labels.copy()
    for position, row in enumerate(rows):
        if row in added.by_index:
            labels[position] = added.by_index[row]
    if not added.files:
        return ImageSet(labeled.images, labels)
    channels, height, width = labeled.shape
    images = read_images(list(added.files), channels, height, width, interpolation)
    return ImageSet(concat_rows([labeled.images, ArrayRows(images)]),
                    np.concatenate([labels, np.fromiter(added.files.values(), np.int64)]))


def normalisation(raw: RawDataset, cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``data.mean``/``data.std`` when given (a pretrained backbone's), else the dataset's.

    Three given values for one-channel images are averaged: grey images fed to an RGB-pretrained
    backbone (whose first layer timm sums over the channels) see the average statistics.
    """
    if cfg.mean is None or cfg.std is None:
        return tuple(raw.mean), tuple(raw.std)
    channels = raw.train.shape[0]
    mean, std = list(cfg.mean), list(cfg.std)
    if channels == 1 and len(mean) == 3:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    if len(mean) != channels:
        raise DataError(
            f"data.mean/data.std give {len(mean)} values but {raw.name} has {channels}-channel "
            f"images; give {channels} value(s)"
        )
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def concat_sets(a: ImageSet, b: ImageSet) -> ImageSet:
    """Stack two image sets; disk-backed parts (an image cache, STL-10's 100k unlabeled) stay on
    disk."""
    if len(a) == 0:
        return b
    if len(b) == 0:
        return a
    if a.shape != b.shape:
        raise DataError(f"unlabeled images of shape {b.shape} do not match {a.shape}")
    return ImageSet(concat_rows([a.images, b.images]), np.concatenate([a.labels, b.labels]))
