"""Test helper: every row of an image set, read on purpose (the sets here are tiny)."""

from __future__ import annotations

import numpy as np


def pixels(images) -> np.ndarray:
    """All rows of ``images`` (image rows or an array) as one array."""
    if isinstance(images, np.ndarray):
        return images
    return images.read(np.arange(len(images)))
