"""Streaming read of one uint8 array from a MATLAB v5 ``.mat`` file (SVHN's ``extra`` split).

``scipy.io.loadmat`` builds a whole variable in RAM: 1.6 GB for the 531k images of
``extra_32x32.mat``, plus its decompression buffers. This reader walks the file's data elements
and hands out the array's bytes in chunks, from a plain element or a zlib-compressed one
(``miCOMPRESSED``, MATLAB 7's default and what the official SVHN files use), so the image cache is
filled with bounded memory. Only what SVHN needs is supported: a real, non-sparse ``uint8``
array stored as ``miUINT8``; anything else is a clear error. The file is untrusted input: every
length is checked against what is left before it is used.

Format (MATLAB "MAT-File Format", level 5): a 128-byte header (text, subsystem offset, version,
endian indicator "IM"/"MI"), then data elements ``(type: u32, nbytes: u32, data, pad to 8)``. A
variable is an ``miMATRIX`` element holding the sub-elements array flags, dimensions, name and
real part; values are stored column-major (first index fastest).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

MI_INT8, MI_UINT8, MI_INT32, MI_UINT32 = 1, 2, 5, 6
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_UINT8_CLASS = 9
_COMPLEX_FLAG = 0x0800
_SPARSE_CLASS = 5
_IN_CHUNK = 1 << 20
_MAX_DIMS = 32


class MatFormatError(ValueError):
    """The file is not a MATLAB v5 file holding the requested uint8 array."""


class _Region:
    """``length`` bytes of the file from its current position."""

    def __init__(self, handle: IO[bytes], length: int) -> None:
        self.handle, self.left = handle, length

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise MatFormatError(f"an element needs {n} bytes but only {self.left} remain")
        data = self.handle.read(n)
        if len(data) != n:
            raise MatFormatError("the file ends inside a data element (truncated)")
        self.left -= n
        return data


class _Inflated:
    """The decompressed bytes of an ``miCOMPRESSED`` element of ``length`` bytes, produced as
    they are read (at most about ``n`` + 1 MiB held at a time)."""

    def __init__(self, handle: IO[bytes], length: int) -> None:
        self.source = _Region(handle, length)
        self.inflate = zlib.decompressobj()
        self.buffer = bytearray()

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            try:
                if self.inflate.unconsumed_tail:
                    data = self.inflate.decompress(self.inflate.unconsumed_tail, _IN_CHUNK)
                elif self.source.left > 0:
                    raw = self.source.read(min(_IN_CHUNK, self.source.left))
                    data = self.inflate.decompress(raw, _IN_CHUNK)
                else:
                    raise MatFormatError("a compressed element ends before the array does")
            except zlib.error as exc:
                raise MatFormatError(f"corrupt compressed data ({exc})") from None
            self.buffer += data
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


class _Elements:
    """Tag and data reading in the file's byte order."""

    def __init__(self, order: str) -> None:
        self.order = order

    def tag(self, source) -> tuple[int, int, bytes | None]:
        """(type, nbytes, small data or None)."""
        first, second = struct.unpack(self.order + "II", source.read(8))
        if first >> 16:  # small element: type and size in one word, data in the next 4 bytes
            nbytes = first >> 16
            if nbytes > 4:
                raise MatFormatError(f"small data element of {nbytes} bytes (at most 4)")
            raw = struct.pack(self.order + "I", second)
            return first & 0xFFFF, nbytes, raw[:nbytes]
        return first, second, None

    def element(self, source, limit: int) -> tuple[int, bytes]:
        """A whole (small) sub-element of at most ``limit`` bytes, padding skipped."""
        kind, nbytes, small = self.tag(source)
        if small is not None:
            return kind, small
        if nbytes > limit:
            raise MatFormatError(f"a header element claims {nbytes} bytes")
        data = source.read(nbytes)
        source.read(-nbytes % 8)
        return kind, data


class Uint8Array:
    """An open uint8 array: ``dims`` (MATLAB order) and ``read(n)``, its bytes column-major."""

    def __init__(self, dims: tuple[int, ...], source) -> None:
        self.dims = dims
        self._source = source
        self.left = 1
        for d in dims:
            self.left *= d

    def read(self, n: int) -> bytes:
        if n > self.left:
            raise MatFormatError(f"read of {n} bytes past the array's end")
        self.left -= n
        return self._source.read(n)


def _byte_order(header: bytes) -> str:
    if len(header) < 128 or not header.startswith(b"MATLAB"):
        raise MatFormatError("not a MATLAB .mat file (no 'MATLAB' header)")
    if header.startswith(b"MATLAB 7.3"):
        raise MatFormatError("MATLAB v7.3 (HDF5) files are not supported; save with -v7")
    indicator = header[126:128]
    if indicator == b"IM":
        return "<"
    if indicator == b"MI":
        return ">"
    raise MatFormatError(f"unknown byte-order indicator {indicator!r} (not a v5 .mat file)")


def _matrix(elements: _Elements, source, length: int, name: str) -> Uint8Array | None:
    """Parse an ``miMATRIX``'s header; the array if it is ``name`` (validated), else None."""
    kind, flags = elements.element(source, 16)
    if kind != MI_UINT32 or len(flags) != 8:
        raise MatFormatError("a matrix lacks its array-flags element")
    word = struct.unpack(elements.order + "I", flags[:4])[0]
    kind, raw_dims = elements.element(source, 4 * _MAX_DIMS)
    if kind != MI_INT32 or not raw_dims or len(raw_dims) % 4:
        raise MatFormatError("a matrix lacks its dimensions element")
    dims = struct.unpack(f"{elements.order}{len(raw_dims) // 4}i", raw_dims)
    kind, raw_name = elements.element(source, 4096)
    if kind != MI_INT8:
        raise MatFormatError("a matrix lacks its name element")
    if raw_name.decode("latin-1") != name:
        return None
    if word & 0xFF != MX_UINT8_CLASS or word & _COMPLEX_FLAG:
        raise MatFormatError(f"'{name}' is not a real uint8 array (class {word & 0xFF})")
    if any(d < 0 for d in dims):
        raise MatFormatError(f"'{name}' has negative dimensions {dims}")
    count = 1
    for d in dims:
        count *= d
    kind, nbytes, small = elements.tag(source)
    if kind != MI_UINT8 or nbytes != count:
        raise MatFormatError(f"'{name}' stores {nbytes} bytes of type {kind} for dimensions "
                             f"{dims} (expected {count} bytes of miUINT8)")
    if small is not None:
        raise MatFormatError(f"'{name}' is too small to hold images")
    if nbytes > length:
        raise MatFormatError(f"'{name}' claims {nbytes} bytes, more than its element")
    return Uint8Array(tuple(dims), source)


@contextmanager
def open_uint8(path: str | Path, name: str) -> Iterator[Uint8Array]:
    """The uint8 variable ``name`` of a v5 ``.mat`` file, to be read in chunks.

    Raises :class:`MatFormatError` (or ``OSError``) when the file is not what it should be."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(0)
        elements = _Elements(_byte_order(handle.read(128)))
        position = 128
        while position + 8 <= size:
            handle.seek(position)
            kind, nbytes, small = elements.tag(_Region(handle, 8))
            if small is not None or nbytes > size - position - 8:
                raise MatFormatError(f"a data element at byte {position} claims {nbytes} bytes "
                                     f"but the file has {size - position - 8} left (truncated?)")
            if kind in (MI_COMPRESSED, MI_MATRIX):
                source = (_Inflated if kind == MI_COMPRESSED else _Region)(handle, nbytes)
                if kind == MI_COMPRESSED:
                    inner, inner_bytes, inner_small = elements.tag(source)
                    if inner != MI_MATRIX or inner_small is not None:
                        raise MatFormatError(f"compressed element at byte {position} holds type "
                                             f"{inner}, not a matrix")
                else:
                    inner_bytes = nbytes
                array = _matrix(elements, source, inner_bytes, name)
                if array is not None:
                    yield array
                    return
            position += 8 + nbytes + (0 if kind == MI_COMPRESSED else -nbytes % 8)
        raise MatFormatError(f"no variable '{name}' in the file")
