"""Class-balanced labeled / validation / unlabeled split, reproducible from ``data_seed``.

The split is a pure function of (training pool labels, labels_per_class, val_per_class,
data_seed), so two runs of different algorithms with the same data seed see the same labels. It is
saved as ``split.json`` beside every run and can be reused with ``data.split_file``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from interlude.config import DataConfig
from interlude.data.base import UNLABELED, ImageSet, RawDataset, SSLData
from interlude.errors import DataError


def draw_split(
    labels: np.ndarray,
    num_classes: int,
    labels_per_class: int,
    val_per_class: int,
    data_seed: int,
    class_names: list[str] | None = None,
) -> dict[str, list[int]]:
    """Pick ``labels_per_class`` labeled and ``val_per_class`` validation indices per class."""
    rng = np.random.default_rng(data_seed)
    labeled: list[int] = []
    val: list[int] = []
    for c in range(num_classes):
        name = class_names[c] if class_names else str(c)
        members = np.flatnonzero(labels == c)
        needed = labels_per_class + val_per_class
        if len(members) == 0:
            raise DataError(
                f"class '{name}' has no images in the training pool; remove it from the "
                "dataset or add images for it"
            )
        if len(members) < needed:
            raise DataError(
                f"class '{name}' has {len(members)} images but {labels_per_class} labeled"
                f" + {val_per_class} validation per class were requested; lower "
                "data.labels_per_class / data.val_per_class"
            )
        chosen = rng.permutation(members)
        val.extend(chosen[:val_per_class].tolist())
        labeled.extend(chosen[val_per_class:needed].tolist())
    return {"labeled": sorted(labeled), "val": sorted(val)}


def load_split_file(path: str | Path, pool_size: int) -> dict[str, list[int]]:
    """Read a ``split.json`` written by an earlier run and check it fits this training pool."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path} (data.split_file)")
    try:
        saved = json.loads(path.read_text())
        split = {"labeled": list(map(int, saved["labeled"])), "val": list(map(int, saved["val"]))}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not a split file written by interlude (needs 'labeled' and 'val' lists):"
            f" {exc}"
        ) from None
    if saved.get("train_pool_size", pool_size) != pool_size:
        raise DataError(
            f"{path} was made for a training pool of {saved['train_pool_size']} images, "
            f"but this dataset's pool has {pool_size}; was it written for another dataset?"
        )
    every = split["labeled"] + split["val"]
    if every and (min(every) < 0 or max(every) >= pool_size):
        raise DataError(f"{path} holds indices outside the training pool of {pool_size} images")
    return split


def build_ssl_data(raw: RawDataset, cfg: DataConfig) -> SSLData:
    """Turn a loader's :class:`RawDataset` into the labeled / unlabeled / val / test sets."""
    pool = raw.train
    known = pool.labels[pool.labels != UNLABELED]
    if len(known) and (known.min() < 0 or known.max() >= raw.num_classes):
        raise DataError(
            f"{raw.name}: labels must be in 0..{raw.num_classes - 1}, found "
            f"{int(known.min())}..{int(known.max())}"
        )
    if cfg.split_file:
        split = load_split_file(cfg.split_file, len(pool))
    else:
        split = draw_split(
            pool.labels, raw.num_classes, cfg.labels_per_class, cfg.val_per_class,
            cfg.data_seed, raw.class_names,
        )
    labeled = pool.subset(np.array(split["labeled"], dtype=np.int64))
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
    unlabeled = _hide_labels(pool.subset(np.flatnonzero(~taken)))
    if raw.extra_unlabeled is not None and len(raw.extra_unlabeled):
        unlabeled = _concat(unlabeled, _hide_labels(raw.extra_unlabeled))
    if len(unlabeled) == 0:
        raise DataError(
            f"{raw.name}: no unlabeled images remain after the split; semi-supervised training "
            "needs an unlabeled pool (lower data.labels_per_class or add unlabeled images)"
        )
    val = pool.subset(np.array(split["val"], dtype=np.int64)) if split["val"] else raw.val
    record = {
        "dataset": raw.name,
        "data_seed": cfg.data_seed,
        "labels_per_class": cfg.labels_per_class,
        "val_per_class": cfg.val_per_class,
        "train_pool_size": len(pool),
        "labeled": split["labeled"],
        "val": split["val"],
    }
    return SSLData(
        labeled=labeled,
        unlabeled=unlabeled,
        test=raw.test,
        val=val,
        class_names=list(raw.class_names),
        mean=tuple(raw.mean),
        std=tuple(raw.std),
        hflip=raw.hflip if cfg.hflip is None else cfg.hflip,
        split=record,
    )


def save_split(data: SSLData, path: str | Path) -> None:
    Path(path).write_text(json.dumps(data.split))


def _hide_labels(images: ImageSet) -> ImageSet:
    """Unlabeled images keep their true labels out of the training loop (kept for diagnostics)."""
    return ImageSet(images.images, images.labels)


def _concat(a: ImageSet, b: ImageSet) -> ImageSet:
    if a.shape != b.shape:
        raise DataError(f"unlabeled images of shape {b.shape} do not match {a.shape}")
    return ImageSet(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))
