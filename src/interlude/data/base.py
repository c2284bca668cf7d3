"""Containers shared by every dataset.

Images are ``uint8`` rows in ``(N, C, H, W)`` layout, held as
:class:`~interlude.data.rows.ImageRows` and read only through it (by index, by chunks, or a
window): in RAM, or, for large sets (an image folder, STL-10's 100k unlabeled images, SVHN's
extra split), on disk as a :class:`~interlude.data.ondisk.DiskImages` from the image cache, which
reads only the rows asked for. The same code reads every backing, and none can be copied whole
into RAM by accident. Augmentation and normalisation happen later, on tensors, so a dataset
loader only has to read files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from interlude.data.rows import ImageRows, as_rows
from interlude.errors import DataError

UNLABELED = -1


@dataclass
class ImageSet:
    """Images ``(N, C, H, W)`` uint8 and integer labels ``(N,)`` (``-1`` = unknown).

    ``images`` may be given as a numpy array: it is wrapped as rows, so every set reads alike.
    """

    images: ImageRows
    labels: np.ndarray

    def __post_init__(self) -> None:
        try:
            self.images = as_rows(self.images)
        except TypeError as exc:
            raise DataError(str(exc)) from None
        if len(self.images.shape) != 4:
            raise DataError(
                f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}"
            )
        if self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8, got {self.images.dtype}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"{len(self.images)} images but labels have shape {self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> ImageSet:
        """The rows ``indices``, read into RAM."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.images.read(indices), self.labels[indices])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


@dataclass
class RawDataset:
    """What a dataset loader returns, before the labeled split is drawn.

    ``train`` is the pool the class-balanced labeled split (and the optional validation split) is
    drawn from; everything in it that is not labeled or validation becomes unlabeled.
    ``extra_unlabeled`` is always unlabeled (STL-10's unlabeled split, an image folder).
    ``all_train_labeled`` marks a pool whose every image carries a label the user wants used
    (an image folder): the split then keeps all of them labeled, apart from the validation
    hold-out, instead of drawing ``labels_per_class``.
    """

    name: str
    train: ImageSet
    test: ImageSet | None
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool = True
    extra_unlabeled: ImageSet | None = None
    val: ImageSet | None = None
    notes: list[str] = field(default_factory=list)
    all_train_labeled: bool = False
    extra_unlabeled_files: list[str] | None = None
    inlier_unlabeled_limit: int | None = None
    """Open set: most in-class images the unlabeled remainder of ``train`` may keep (drawn with
    ``data.data_seed`` after the labeled split), so that the outliers make up the requested
    fraction of the pool when the other classes have too few images for the full remainder."""
    """The file of each ``extra_unlabeled`` row (image folders), so suggestions name files."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class SSLData:
    """The sets a run trains and evaluates on."""

    labeled: ImageSet
    unlabeled: ImageSet
    test: ImageSet | None
    val: ImageSet | None
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    split: dict = field(default_factory=dict)
    interpolation: str = "bilinear"
    """The filter the images were resized with; predictions resize new images the same way."""
    extra_unlabeled_files: list[str] | None = None
    """The file of each unlabeled row that came from an unlabeled folder (the last rows of
    ``unlabeled``); ``interlude suggest`` names files with it."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.labeled.shape
