"""The image cache: images decoded once, stored as raw uint8 rows on disk, read by row.

Image folders, TMED-2, STL-10's unlabeled split and SVHN's ``extra`` split are converted once into
one file per set and reused by later runs (:class:`~interlude.data.ondisk.DiskImages` reads the
rows a batch needs), so RAM use does not grow with the number of images. Layout, in
``data.cache_dir`` (default ``$INTERLUDE_CACHE_DIR``, else ``$XDG_CACHE_HOME/interlude``, else
``~/.cache/interlude``)::

    images/<label>-<slot>-<key>.u8          rows (N, C, H, W) uint8, C-order, nothing else
    images/<label>-<slot>-<key>.json        metadata: shape, pixel sums, source details
    images/<label>-<slot>-<key>.build.lock  flock held while the entry is built
    images/<label>-<slot>-<key>.use.lock    shared flock held by every process using it

``key`` hashes everything the pixels depend on (for a folder: every file's relative path, its
:func:`stat_signature` (size, mtime, ctime, inode), its label, the resolution, the decoder
version); ``slot`` hashes what names the
source (folder and role, resolution), so an entry superseded because files changed is pruned
when its replacement is built, unless a process still uses it.

Invalidation is by key: a file added, removed or changed (size, mtime, or the ctime and inode
that ``touch -r`` cannot restore) gives a new key and a rebuild. Building is atomic and
serialised: the builder holds the entry's build lock, writes the rows to a temporary file and
renames it, then writes the metadata (atomically too), so a kill
leaves no half entry and a second process building the same entry waits and reuses the first's.
The metadata is read back as untrusted input: anything unexpected (bad JSON, wrong shape or file
size, inconsistent counts) means the entry is rebuilt with a warning, never used. The rows
themselves carry no checksum (hashing gigabytes would cost the fast start a cache exists for).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from interlude.data.ondisk import DiskImages
from interlude.data.rows import ImageRows, as_rows
from interlude.errors import DataError, shown
from interlude.files import TMP_SUFFIX, open_lock_file, parse_json, write_atomic

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent builders then duplicate work (still atomic)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("interlude")

FORMAT = 1
"""Version of the entry layout; entries of another version are rebuilt."""


# --------------------------------------------------------------------------- where
def default_cache_dir() -> Path:
    """``$INTERLUDE_CACHE_DIR``, else ``$XDG_CACHE_HOME/interlude``, else ``~/.cache/interlude``."""
    if os.environ.get("INTERLUDE_CACHE_DIR"):
        return Path(os.environ["INTERLUDE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "interlude"


def cache_root(enabled: bool, cache_dir: str | None) -> Path | None:
    """The cache folder for ``data.cache`` / ``data.cache_dir``, or None when caching is off."""
    if not enabled:
        return None
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def fingerprint(parts: Iterable[str]) -> str:
    """A 128-bit hex digest of ``parts`` (each part separated, so ("ab", "c") != ("a", "bc"))."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape"))
        digest.update(b"\x00")
    return digest.hexdigest()


def file_signature(path: Path) -> str:
    """What says a file changed, without reading it (see :func:`stat_signature`)."""
    return stat_signature(path.stat())


def stat_signature(stat: os.stat_result) -> str:
    """Size, modification and status-change times (ns) and inode of a file.

    Size and mtime alone are forgeable: ``cp other file; touch -r backup file`` restores both. The
    status-change time (ctime) is set by the kernel on every write, rename or ``touch`` and cannot
    be set back, and the inode changes when a file is replaced by another; so a file whose
    content changed always gets a new signature (a ``chmod`` costs a needless rebuild, never a
    wrong one)."""
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


# --------------------------------------------------------------------------- pixel sums
def rows_per_chunk(row_bytes: int, budget: int = 32 << 20) -> int:
    """Rows of ``row_bytes`` that fit a working buffer of ``budget`` bytes (at least one)."""
    return max(1, budget // max(1, row_bytes))


def to_luma(rgb: np.ndarray | ImageRows) -> np.ndarray:
    """(N, 3, H, W) -> (N, 1, H, W) with PIL's ITU-R 601-2 integer formula (exact for gray)."""
    out = np.empty((len(rgb), 1, *rgb.shape[2:]), dtype=np.uint8)
    chunk = rows_per_chunk(4 * int(np.prod(rgb.shape[1:])))  # uint32 intermediate
    start = 0
    for rows in as_rows(rgb).chunks(chunk):
        c = rows.astype(np.uint32)
        out[start : start + len(rows), 0] = (
            c[:, 0] * 19595 + c[:, 1] * 38470 + c[:, 2] * 7471 + 0x8000
        ) >> 16
        start += len(rows)
    return out


@dataclass
class PixelSums:
    """Exact integer sums of pixel values and their squares, per channel and for the luma of
    RGB rows: mean/std of any union of sets follow without reading the images again (a cached
    pool's statistics come from its metadata), and equal images give equal statistics whether
    cached or not."""

    pixels: int = 0
    """Values per channel summed so far (rows x H x W)."""
    total: list[int] = field(default_factory=list)
    squares: list[int] = field(default_factory=list)
    luma_total: int = 0
    luma_squares: int = 0

    def add(self, rows: np.ndarray) -> None:
        channels = rows.shape[1]
        if not self.total:
            self.total, self.squares = [0] * channels, [0] * channels
        self.pixels += rows.shape[0] * rows.shape[2] * rows.shape[3]
        for start in range(0, len(rows), 256):
            part = rows[start : start + 256]
            for c in range(channels):
                self.total[c] += int(part[:, c].sum(dtype=np.int64))
                self.squares[c] += int(np.square(part[:, c], dtype=np.uint16).sum(dtype=np.int64))
            luma = to_luma(part) if channels == 3 else part
            self.luma_total += int(luma.sum(dtype=np.int64))
            self.luma_squares += int(np.square(luma, dtype=np.uint16).sum(dtype=np.int64))

    def __add__(self, other: PixelSums) -> PixelSums:
        if not self.total:
            return other
        if not other.total:
            return self
        return PixelSums(
            self.pixels + other.pixels,
            [a + b for a, b in zip(self.total, other.total, strict=True)],
            [a + b for a, b in zip(self.squares, other.squares, strict=True)],
            self.luma_total + other.luma_total, self.luma_squares + other.luma_squares,
        )

    def mean_std(self, luma: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std in [0, 1] units (of the luma when ``luma``)."""
        totals = [(self.luma_total, self.luma_squares)] if luma else list(
            zip(self.total, self.squares, strict=True))
        mean, std = [], []
        for total, squares in totals:
            m = total / self.pixels / 255.0
            mean.append(float(m))
            std.append(float(np.sqrt(max(squares / self.pixels / 255.0**2 - m * m, 1e-12))))
        return tuple(mean), tuple(std)

    def to_json(self) -> dict[str, Any]:
        return {"pixels": self.pixels, "total": self.total, "squares": self.squares,
                "luma_total": self.luma_total, "luma_squares": self.luma_squares}

    @classmethod
    def from_json(cls, tree: Any, channels: int, rows: int, pixels_per_row: int) -> PixelSums:
        """Rebuild from metadata; raises ValueError when the values cannot be right."""
        def count(value: Any, top: int) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise ValueError(f"pixel sum {shown(value)} outside 0..{top}")
            return value

        if not isinstance(tree, dict):
            raise ValueError("pixel sums are not a mapping")
        pixels = count(tree.get("pixels"), 2**62)
        if pixels != rows * pixels_per_row:
            raise ValueError(f"pixel count {pixels} does not match {rows} rows")
        lists = [tree.get("total"), tree.get("squares")]
        if any(not isinstance(v, list) or len(v) != (channels if rows else len(v)) for v in lists):
            raise ValueError("per-channel sums have the wrong length")
        total = [count(v, 255 * pixels) for v in lists[0]]
        squares = [count(v, 255**2 * pixels) for v in lists[1]]
        luma = count(tree.get("luma_total"), 255 * pixels), count(tree.get("luma_squares"),
                                                                 255**2 * pixels)
        for t, q in [*zip(total, squares, strict=True), luma]:
            _check_sum_pair(t, q, pixels)
        return cls(pixels, total, squares, *luma)


def _check_sum_pair(total: int, squares: int, pixels: int) -> None:
    """What ``pixels`` values in 0..255 allow: ``sum(x)**2 <= n * sum(x**2)`` (Cauchy-Schwarz,
    the variance is not negative) and ``sum(x**2) <= 255 * sum(x)`` (each ``x**2 <= 255 x``).
    Forged sums outside these would give a negative or impossible variance, so the entry is
    rebuilt instead of normalising with them."""
    if total * total > pixels * squares or squares > 255 * total:
        raise ValueError(f"pixel sums {total} and {squares} are impossible for {pixels} values "
                         "in 0..255")


# --------------------------------------------------------------------------- writing rows
class RowWriter:
    """Where a builder puts its rows, in order: a cache file or a preallocated array. Keeps the
    pixel sums, a progress bar, and the throughput logged when done."""

    def __init__(self, shape: tuple[int, int, int], expected: int, description: str,
                 handle: IO[bytes] | None = None, array: np.ndarray | None = None) -> None:
        self.shape = tuple(shape)
        self.count = 0
        self.sums = PixelSums()
        self._handle, self._array = handle, array
        self._description = description
        self._started = time.perf_counter()
        self._bar = None
        if expected >= 2048:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=expected, desc=description, unit="img", leave=False,
                             disable=None, dynamic_ncols=True)

    def write(self, rows: np.ndarray) -> None:
        """Append uint8 rows ``(k, C, H, W)``."""
        if rows.dtype != np.uint8 or tuple(rows.shape[1:]) != self.shape:
            raise ValueError(f"rows {rows.dtype} {rows.shape} do not fit {self.shape}")
        if len(rows) == 0:
            return
        rows = np.ascontiguousarray(rows)
        if self._handle is not None:
            self._handle.write(memoryview(rows.reshape(-1)))
        else:
            assert self._array is not None
            self._array[self.count : self.count + len(rows)] = rows
        self.count += len(rows)
        self.sums.add(rows)

    def progress(self, items: int) -> None:
        """``items`` more source items handled (decoded or skipped)."""
        if self._bar is not None:
            self._bar.update(items)

    def finish(self) -> float:
        """Close the progress bar; return the seconds spent."""
        if self._bar is not None:
            self._bar.close()
        return time.perf_counter() - self._started


Build = Callable[[RowWriter], dict]
"""Writes every row through the writer and returns the entry's ``info`` (JSON-able)."""
CheckInfo = Callable[[Any, int], None]
"""Raises ValueError/TypeError/KeyError when an ``info`` read back cannot describe ``rows``."""


def build_in_memory(shape: tuple[int, int, int], expected: int, description: str,
                    build: Build) -> tuple[np.ndarray, dict, PixelSums]:
    """Run ``build`` into RAM (``data.cache=false``): the same rows, info and sums as a cache
    entry, in an array of at most ``expected`` rows."""
    array = np.empty((expected, *shape), dtype=np.uint8)
    writer = RowWriter(shape, expected, description, array=array)
    info = build(writer)
    writer.finish()
    return array[: writer.count], info, writer.sums


# --------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class CacheSpec:
    """One entry: ``label`` (readable name), ``source`` (what names the source, e.g. folder and
    role; entries of the same source and label supersede each other), ``key`` (everything the
    pixels depend on), ``shape`` (C, H, W) of a row, ``expected`` rows (progress bar)."""

    label: str
    source: tuple[str, ...]
    key: str
    shape: tuple[int, int, int]
    expected: int = 0

    @property
    def stem(self) -> str:
        return f"{self.label}-{fingerprint(self.source)[:12]}-{self.key[:24]}"


@dataclass
class Cached:
    """An entry in use: its rows, its ``info``, its pixel sums, and whether it was built now."""

    images: DiskImages
    info: dict
    sums: PixelSums
    path: Path
    built: bool = False


class _Lock:
    """An open lock file; ``flock`` modes are taken on it (no-ops without fcntl)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open_lock_file(path)  # never through a planted symlink; held while used

    def take(self, mode: int, blocking: bool = True) -> bool:
        if fcntl is None:
            return True
        try:
            fcntl.flock(self.handle.fileno(), mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        self.handle.close()


@contextmanager
def _exclusive(lock: _Lock, label: str):
    try:
        if fcntl is not None and not lock.take(fcntl.LOCK_EX, blocking=False):
            log.info("waiting for another process building the %s image cache (%s)", label,
                     lock.path)
            lock.take(fcntl.LOCK_EX)
        yield
    finally:
        lock.close()


def _open_lock(folder: Path, name: str) -> _Lock:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return _Lock(folder / name)
    except OSError as exc:
        raise DataError(f"cannot write the image cache in {folder} ({exc.strerror or exc}); set "
                        "data.cache_dir to a writable folder, or data.cache=false") from None


def open_cached(root: Path, spec: CacheSpec, build: Build, check_info: CheckInfo) -> Cached:
    """The entry ``spec`` in ``root``: reused when valid, else built (once, under a lock)."""
    folder = root / "images"
    with _exclusive(_open_lock(folder, f"{spec.stem}.build.lock"), spec.label):
        entry, problem = _read_entry(folder, spec, check_info)
        if entry is None:
            if problem != "missing":
                log.warning("image cache %s is damaged (%s); rebuilding it",
                            folder / f"{spec.stem}.json", problem)
            _build(folder, spec, build)
            entry, problem = _read_entry(folder, spec, check_info)
            if entry is None:
                raise DataError(f"the image cache {folder / spec.stem} just built does not read "
                                f"back ({problem}); delete {folder} and run again")
            entry.built = True
    use = _open_lock(folder, f"{spec.stem}.use.lock")
    if fcntl is not None:
        use.take(fcntl.LOCK_SH)  # held while the rows are in use: pruning skips this entry
    entry.images._hold = use
    if entry.built:
        _prune(folder, spec)
    return entry


def _read_entry(folder: Path, spec: CacheSpec, check_info: CheckInfo) -> tuple[Cached | None, str]:
    """The entry if its metadata and file check out, else (None, why)."""
    meta_path, data_path = folder / f"{spec.stem}.json", folder / f"{spec.stem}.u8"
    if not meta_path.is_file() or not data_path.is_file():
        return None, "missing"
    try:
        meta = parse_json(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {shown(meta.get('format'))}, expected {FORMAT}")
        if meta.get("key") != spec.key:
            raise ValueError("key does not match the file name")
        shape = meta.get("shape")
        if (not isinstance(shape, list) or len(shape) != 4
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
                or shape[0] < 0 or tuple(shape[1:]) != spec.shape):
            raise ValueError(f"shape {shown(shape)} is not (N, {', '.join(map(str, spec.shape))})")
        rows = shape[0]
        expected_bytes = rows * int(np.prod(spec.shape))
        size = data_path.stat().st_size
        if size != expected_bytes:
            raise ValueError(f"{data_path.name} holds {size} bytes, {expected_bytes} expected")
        sums = PixelSums.from_json(meta.get("sums"), spec.shape[0], rows,
                                   spec.shape[1] * spec.shape[2])
        info = meta.get("info")
        if not isinstance(info, dict):
            raise ValueError("no info mapping")
        check_info(info, rows)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)
    images = DiskImages(data_path, (rows, *spec.shape))
    return Cached(images, info, sums, data_path), ""


def _build(folder: Path, spec: CacheSpec, build: Build) -> None:
    """Write the rows (temporary file + rename), then the metadata (atomically)."""
    data_path = folder / f"{spec.stem}.u8"
    for orphan in folder.glob(f".{data_path.name}.*{TMP_SUFFIX}"):  # a killed builder's
        orphan.unlink(missing_ok=True)
    log.info("building the %s image cache: %d images -> %s", spec.label, spec.expected, data_path)
    outcome: dict[str, Any] = {}

    def write_rows(handle: IO[bytes]) -> None:
        writer = RowWriter(spec.shape, spec.expected, f"caching {spec.label}", handle=handle)
        outcome["info"] = build(writer)
        outcome["seconds"] = writer.finish()
        outcome["writer"] = writer

    write_atomic(data_path, write_rows)
    writer: RowWriter = outcome["writer"]
    meta = {"format": FORMAT, "key": spec.key, "label": spec.label, "source": list(spec.source),
            "shape": [writer.count, *spec.shape], "dtype": "uint8",
            "created": time.strftime("%Y-%m-%d %H:%M:%S"), "sums": writer.sums.to_json(),
            "info": outcome["info"]}
    write_atomic(folder / f"{spec.stem}.json", json.dumps(meta))
    seconds = outcome["seconds"]
    log.info("cached %d %s images (%.0f MB) in %.1f s (%.0f images/s)", writer.count, spec.label,
             writer.count * np.prod(spec.shape) / 1e6, seconds, writer.count / max(seconds, 1e-9))


def _prune(folder: Path, spec: CacheSpec) -> None:
    """Remove entries of the same source superseded by ``spec`` (files changed), except those a
    process is using or building."""
    prefix = spec.stem[: -len(spec.key[:24])]
    for meta in folder.glob(f"{prefix}*.json"):
        stem = meta.name[: -len(".json")]
        if stem == spec.stem:
            continue
        try:
            use = _Lock(folder / f"{stem}.use.lock")
        except OSError:  # a planted link, or gone: not ours to prune
            continue
        try:
            build = _Lock(folder / f"{stem}.build.lock")
        except OSError:
            use.close()
            continue
        try:
            if fcntl is None or not (use.take(fcntl.LOCK_EX, False)
                                     and build.take(fcntl.LOCK_EX, False)):
                continue
            for suffix in (".u8", ".json", ".use.lock", ".build.lock"):
                (folder / f"{stem}{suffix}").unlink(missing_ok=True)
            log.info("removed the superseded image cache %s", folder / stem)
        finally:
            use.close()
            build.close()
    for orphan in folder.glob(f".{prefix}*{TMP_SUFFIX}"):  # rows of a killed build of an older key
        stem = orphan.name[1:].split(".u8.")[0].split(".json.")[0]
        if stem == spec.stem or not (folder / f"{stem}.build.lock").is_file():
            continue
        try:
            build = _Lock(folder / f"{stem}.build.lock")
        except OSError:
            continue
        try:
            if fcntl is not None and build.take(fcntl.LOCK_EX, False):  # nobody is building it
                orphan.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted image cache build", orphan)
        finally:
            build.close()
