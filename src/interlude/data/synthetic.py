"""Random images as an :class:`SSLData`: what speed benchmarks and GPU checks train on.

The speed of a training step does not depend on the pixels, and random data needs no download,
so the benchmarks and the CUDA tests measure the real training path on any machine.
"""

from __future__ import annotations

import numpy as np

from interlude.data.base import UNLABELED, ImageSet, SSLData


def synthetic_data(labeled: int = 400, unlabeled: int = 4000, size: int = 32, classes: int = 10,
                   channels: int = 3, seed: int = 0) -> SSLData:
    """``labeled`` + ``unlabeled`` uniform random uint8 images of ``size`` px (labels cycle
    through the classes); no test or validation set."""
    rs = np.random.RandomState(seed)
    images = rs.randint(0, 256, (labeled + unlabeled, channels, size, size), dtype=np.uint8)
    return SSLData(
        labeled=ImageSet(images[:labeled], np.arange(labeled) % classes),
        unlabeled=ImageSet(images[labeled:], np.full(unlabeled, UNLABELED)),
        test=None, val=None, class_names=[str(c) for c in range(classes)],
        mean=(0.5,) * channels, std=(0.25,) * channels, hflip=True,
    )
