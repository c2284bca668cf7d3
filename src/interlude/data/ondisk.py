"""Image arrays that stay on disk: only the rows a batch needs are read.

:class:`DiskImages` is a read-only uint8 ``(N, C, H, W)`` array stored as raw bytes in a file (the
image cache, :mod:`interlude.data.cache`). Rows are read with ``pread`` into a fresh buffer rather
than through ``np.memmap``: every page of a memory map that a process touches is counted in its
resident set and stays mapped, so a long run over a large pool would end up "holding" the whole
file; ``pread`` leaves the file in the kernel's page cache (shared between processes, reclaimable)
and the process holds just the batch.

:class:`ConcatImages` stacks arrays row-wise without copying them, and :func:`row_window` gives a
lazy range of rows, so nothing downstream has to materialise a disk-backed pool to use part of it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from interlude.errors import DataError


def _row_index(key: Any, length: int) -> np.ndarray:
    """An int64 index array of rows for ``key`` (slice, int array or bool mask), bounds-checked."""
    if isinstance(key, slice):
        return np.arange(*key.indices(length), dtype=np.int64)
    index = np.asarray(key)
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


class DiskImages:
    """uint8 ``(N, C, H, W)`` rows in a raw file at ``offset``, read on demand with ``pread``.

    Supports what the data pipeline uses: ``len``, ``shape``/``dtype``/``ndim``/``nbytes``,
    indexing rows by int, slice, index array or boolean mask (each returns a new in-memory
    array), and ``np.asarray`` (reads the whole file: only for small sets). ``hold`` is any object
    kept alive with the array (the cache's shared lock, so the file is not pruned while in use).
    The file descriptor is opened at construction, so a file unlinked later stays readable; a
    pickled copy (a spawned DataLoader worker) reopens the path.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], offset: int = 0,
                 hold: Any = None) -> None:
        self.path = Path(path)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)
        self.offset = int(offset)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64))
        self._hold = hold
        self._fd = -1
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise DataError(f"cannot open the image cache file {self.path} ({exc.strerror}); "
                            "it was removed while in use: start the run again") from None
        size = os.fstat(self._fd).st_size
        if size < self.offset + self.nbytes:
            os.close(self._fd)
            self._fd = -1
            raise DataError(f"{self.path} holds {size} bytes, fewer than the {self.nbytes} of "
                            f"{self.shape} images: delete it to rebuild the cache")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def _read(self, out: np.ndarray, first: int) -> None:
        """Fill ``out`` (contiguous rows) with rows ``first, first + 1, ...`` of the file."""
        view = memoryview(out.reshape(-1))
        position = self.offset + first * self.row_bytes
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                got = os.preadv(self._fd, [view[done:]], position + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(self._fd, len(view) - done, position + done)
                view[done : done + len(chunk)] = chunk
                got = len(chunk)
            if got == 0:
                raise DataError(f"{self.path} ended early (truncated while in use?); delete it "
                                "to rebuild the cache")
            done += got

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` (int64, in range) as a new array; runs of consecutive rows are read
        with one call, each distinct row once."""
        out = np.empty((len(index), *self.shape[1:]), dtype=np.uint8)
        if len(index) == 0:
            return out
        if len(index) > 1 and np.all(np.diff(index) == 1):
            self._read(out, int(index[0]))
            return out
        unique, inverse = np.unique(index, return_inverse=True)
        buffer = out if len(unique) == len(index) else np.empty(
            (len(unique), *self.shape[1:]), dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(unique)], strict=True):
            self._read(buffer[start:stop], int(unique[start]))
        if buffer is out and np.array_equal(unique, index):
            return out
        return buffer[inverse.reshape(-1)]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, slice) and np.ndim(key) == 0:  # int, numpy or torch scalar
            row = int(key)
            row = row + len(self) if row < 0 else row
            if not 0 <= row < len(self):
                raise IndexError(f"row {int(key)} out of range for {len(self)} images")
            return self.rows(np.array([row], dtype=np.int64))[0]
        return self.rows(_row_index(key, len(self)))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        array = self.rows(np.arange(len(self), dtype=np.int64))
        return array if dtype is None else array.astype(dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape, "offset": self.offset}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["shape"], state["offset"])  # type: ignore[misc]

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the fd goes anyway
            self.close()

    def __repr__(self) -> str:
        return f"DiskImages({str(self.path)!r}, shape={self.shape})"


class ConcatImages:
    """Read-only row-wise concatenation of uint8 ``(N, C, H, W)`` arrays, without copying them.

    ``np.concatenate`` would read a disk-backed part (a cached image folder, STL-10's unlabeled
    split) into RAM; this gathers only the rows asked for. It supports what the data pipeline
    uses: ``len``, ``shape``/``dtype``/``ndim``/``nbytes``, and indexing rows by int, slice or
    index array.
    """

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0, *(len(p) for p in parts)])
        self.shape: tuple[int, ...] = (int(self.offsets[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, slice) and np.ndim(key) == 0:  # int, numpy or torch scalar
            return self[np.array([int(key)])][0]
        index = _row_index(key, len(self))
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        which = np.searchsorted(self.offsets, index, side="right") - 1
        for part in np.unique(which):
            rows = which == part
            out[rows] = self.parts[part][index[rows] - self.offsets[part]]
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        array = np.concatenate([np.asarray(p) for p in self.parts])
        return array if dtype is None else array.astype(dtype)


class RowWindow:
    """Rows ``[start, stop)`` of an array, read only when sliced (for batched evaluation)."""

    def __init__(self, array: Any, start: int, stop: int) -> None:
        self.array, self.start, self.stop = array, start, stop
        self.shape = (stop - start, *array.shape[1:])

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key: slice) -> np.ndarray:
        first, last, step = key.indices(len(self))
        return self.array[self.start + first : self.start + last : step]


def is_disk_backed(array: Any) -> bool:
    """True for arrays whose rows live in a file (a cache, a memory map) or contain such parts:
    they must be gathered by row, never copied whole into RAM or onto a device."""
    if isinstance(array, (DiskImages, np.memmap)):
        return True
    if isinstance(array, ConcatImages):
        return any(is_disk_backed(p) for p in array.parts)
    return False


def row_window(array: Any, start: int, stop: int) -> Any:
    """``array[start:stop]``, lazily for a disk-backed array (read batch by batch when sliced)."""
    return RowWindow(array, start, stop) if is_disk_backed(array) else array[start:stop]
