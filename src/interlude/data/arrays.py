"""In-memory images as a dataset: what ``InterLUDEClassifier.fit(X, y)`` trains on.

Every row with a label is labeled (the split is the user's, nothing is drawn) and the rest form
the unlabeled pool; with no unlabeled row, the labeled images double as the pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from interlude.config import DataConfig
from interlude.data.base import UNLABELED, ImageSet, RawDataset, SSLData
from interlude.data.builtin import channel_stats
from interlude.data.registry import register_dataset
from interlude.data.splits import build_ssl_data
from interlude.errors import DataError

ESTIMATOR_DATASET = "arrays"  # data.name of runs trained by InterLUDEClassifier from arrays


@register_dataset(ESTIMATOR_DATASET)
def load_arrays(cfg: DataConfig) -> RawDataset:
    """The arrays given to ``InterLUDEClassifier.fit``: a run of them is rebuilt from its saved
    config (eval, export), but its images exist only in memory."""
    raise DataError(f"data.name={ESTIMATOR_DATASET} names the in-memory arrays given to "
                    "InterLUDEClassifier.fit; train on them from Python, or choose a dataset")


def array_data(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    cfg: DataConfig,
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
) -> SSLData:
    """uint8 ``(N, C, H, W)`` images and labels ``0..K-1`` (``-1`` unlabeled) as an SSLData.

    Mean/std come from the images unless ``stats`` is given (a warm start keeps the
    normalisation its weights were trained with).
    """
    if stats is not None and len(stats[0]) == images.shape[1]:
        mean, std = tuple(stats[0]), tuple(stats[1])
    else:
        mean, std = channel_stats(images)
        std = tuple(max(s, 1.0 / 255.0) for s in std)  # a constant channel must not divide by 0
    extra = None
    if (labels != UNLABELED).all():
        extra = ImageSet(images, np.full(len(images), UNLABELED, dtype=np.int64))
    raw = RawDataset(
        name=ESTIMATOR_DATASET, train=ImageSet(images, labels), test=None,
        class_names=[str(c) for c in class_names], mean=mean, std=std, hflip=False,
        extra_unlabeled=extra, all_train_labeled=True,
    )
    return build_ssl_data(raw, cfg)
