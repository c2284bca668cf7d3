"""Image rows that stay on disk: only the rows a batch needs are read.

:class:`DiskImages` is read-only uint8 ``(N, C, H, W)`` rows
(:class:`~interlude.data.rows.ImageRows`) stored as raw bytes in a file (the image cache,
:mod:`interlude.data.cache`). Rows are read with ``pread`` into a fresh buffer rather than through
``np.memmap``: every page of a memory map that a process touches is counted in its resident set
and stays mapped, so a long run over a large pool would end up "holding" the whole file;
``pread`` leaves the file in the kernel's page cache (shared between processes, reclaimable) and
the process holds just the batch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from interlude.data.rows import RowReader
from interlude.errors import DataError


class DiskImages(RowReader):
    """uint8 ``(N, C, H, W)`` rows in a raw file at ``offset``, read on demand with ``pread``.

    Rows are read through :class:`~interlude.data.rows.ImageRows` (``read``, ``chunks``,
    ``window``); array access (``np.asarray``, indexing) is refused. ``hold`` is any object
    kept alive with the array (the cache's shared lock, so the file is not pruned while in use).
    The file descriptor is opened at construction, so a file unlinked later stays readable; a
    pickled copy (a spawned DataLoader worker) reopens the path.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], offset: int = 0,
                 hold: Any = None) -> None:
        self.path = Path(path)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype = np.dtype(np.uint8)
        self.on_disk = True
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

    def _rows(self, index: np.ndarray) -> np.ndarray:
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
