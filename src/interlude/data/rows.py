"""Image rows: the one way an image set's pixels are read.

An :class:`~interlude.data.base.ImageSet` holds its images as :class:`ImageRows`: uint8
``(N, C, H, W)`` rows read by index (``read``), walked in chunks (``chunks``) or narrowed to a
lazy range (``window``). The backings are an in-memory array (:class:`ArrayRows`, also a memory
map), the image cache (:class:`~interlude.data.ondisk.DiskImages`), a row-wise concatenation
(:class:`ConcatRows`) and a range of another set (:class:`WindowRows`). None of them can be
indexed like an array or turned into one (``np.asarray``, ``rows[:]``, ``np.concatenate``): a
whole set is only read on purpose, so a 2.8 GB cache is never pulled into RAM by accident.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

REFUSED = ("image rows are read with .read(indices), .chunks(size) or .window(start, stop), "
           "never whole as an array (a disk-backed set would be read into RAM)")


@runtime_checkable
class ImageRows(Protocol):
    """uint8 ``(N, C, H, W)`` rows, read by index.

    ``read`` takes integer row indices in any order, repeats allowed (negative ones count from
    the end), or a boolean mask of every row, and returns a new C-contiguous array of those rows
    in that order; ``chunks`` yields consecutive rows ``size`` at a time; ``window`` is rows
    ``[start, stop)`` as rows again, without reading them. ``on_disk`` says the rows live in a
    file (the image cache, a memory map): such a set is gathered batch by batch, never copied
    whole onto a device.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    on_disk: bool

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def read(self, indices: Any) -> np.ndarray: ...

    def chunks(self, size: int) -> Iterator[np.ndarray]: ...

    def window(self, start: int, stop: int) -> ImageRows: ...


def row_index(indices: Any, length: int) -> np.ndarray:
    """``indices`` (integers, negative ones counting from the end, or a boolean mask of every
    row) as in-range int64 row numbers."""
    index = np.asarray(indices)
    if index.dtype == bool:
        if index.shape != (length,):
            raise IndexError(f"boolean index of shape {index.shape} for {length} rows")
        return np.flatnonzero(index)
    if index.size and not np.issubdtype(index.dtype, np.integer):
        raise IndexError(f"rows must be indexed by integers, got {index.dtype}")
    index = index.astype(np.int64).reshape(-1)
    index = np.where(index < 0, index + length, index)
    if index.size and (index.min() < 0 or index.max() >= length):
        raise IndexError(f"row index out of range for {length} images")
    return index


class RowReader:
    """What every backing shares: size, chunks, windows, and the refusal of array access.

    A backing sets ``shape``, ``dtype`` and ``on_disk`` and implements ``_rows`` (in-range int64
    indices to a new array).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    on_disk: bool = False

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, indices: Any) -> np.ndarray:
        return self._rows(row_index(indices, len(self)))

    def _rows(self, index: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self), size):
            yield self._rows(np.arange(start, min(start + size, len(self)), dtype=np.int64))

    def window(self, start: int, stop: int) -> ImageRows:
        return WindowRows(self, start, stop)

    def __getitem__(self, key: Any) -> np.ndarray:
        raise TypeError(REFUSED)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(REFUSED)


class ArrayRows(RowReader):
    """Rows of a numpy array: in RAM, or a memory map (``on_disk``: read by rows only)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.on_disk = isinstance(array, np.memmap)

    def _rows(self, index: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[index]).view(np.ndarray)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self), size):
            yield np.asarray(self.array[start : start + size]).view(np.ndarray)

    def window(self, start: int, stop: int) -> ImageRows:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"window [{start}, {stop}) outside {len(self)} rows")
        return ArrayRows(self.array[start:stop])  # a view (of a memory map: still on disk)

    def __repr__(self) -> str:
        return f"ArrayRows(shape={self.shape}, on_disk={self.on_disk})"


class ConcatRows(RowReader):
    """Row-wise concatenation of row sets, without copying them: ``np.concatenate`` would read
    a disk-backed part (a cached image folder, STL-10's unlabeled split) into RAM; this gathers
    only the rows asked for."""

    def __init__(self, parts: Sequence[ImageRows]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *(len(p) for p in self.parts)])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype
        self.on_disk = any(p.on_disk for p in self.parts)

    def _rows(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        for part in np.unique(which):
            rows = which == part
            out[rows] = self.parts[part].read(index[rows] - self.offsets[part])
        return out

    def __repr__(self) -> str:
        return f"ConcatRows({self.parts!r})"


class WindowRows(RowReader):
    """Rows ``[start, stop)`` of another row set, read only when asked (batched evaluation of a
    rank's shard)."""

    def __init__(self, rows: ImageRows, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= len(rows):
            raise IndexError(f"window [{start}, {stop}) outside {len(rows)} rows")
        self.rows, self.start = rows, int(start)
        self.shape = (int(stop) - int(start), *rows.shape[1:])
        self.dtype = rows.dtype
        self.on_disk = rows.on_disk

    def _rows(self, index: np.ndarray) -> np.ndarray:
        return self.rows.read(index + self.start)

    def window(self, start: int, stop: int) -> ImageRows:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"window [{start}, {stop}) outside {len(self)} rows")
        return WindowRows(self.rows, self.start + start, self.start + stop)

    def __repr__(self) -> str:
        return f"WindowRows({self.rows!r}, {self.start}, {self.start + len(self)})"


def as_rows(images: np.ndarray | ImageRows) -> ImageRows:
    """``images`` as rows: arrays are wrapped, row sets pass as they are."""
    if isinstance(images, np.ndarray):
        return ArrayRows(images)
    if isinstance(images, ImageRows):
        return images
    raise TypeError(f"images must be a numpy array or image rows, got {type(images).__name__}")


def concat_rows(parts: Sequence[ImageRows]) -> ImageRows:
    """Stack row sets: one array when every part is in RAM (rows then read by plain indexing),
    else a :class:`ConcatRows` whose disk-backed parts stay on disk."""
    flat: list[ImageRows] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, ConcatRows) else [part])
    if all(isinstance(p, ArrayRows) and not p.on_disk for p in flat):
        return ArrayRows(np.concatenate([p.array for p in flat]))  # type: ignore[attr-defined]
    return ConcatRows(flat)
