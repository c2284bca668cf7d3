"""One folder's images decoded into a set: through the image cache, or into RAM.

Both paths run the same code, writing the same rows (in file order, unreadable files left out)
through a :class:`~interlude.data.cache.RowWriter` into a cache file or a preallocated array, so
a cached set and an uncached one hold identical images, labels, statistics and reports. Decoding
runs in threads (PIL releases the GIL while decoding and resizing) with a bounded window of
files in flight, so memory does not grow with the number of files.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interlude.data.cache import (
    CacheSpec,
    PixelSums,
    RowWriter,
    build_in_memory,
    fingerprint,
    open_cached,
    rows_per_chunk,
    to_luma,
)
from interlude.data.decode import DECODER_VERSION, Depth, DepthSummary, try_decode

_BATCH = 256


@dataclass
class FolderSet:
    """A decoded folder: RGB rows ``(N, 3, S, S)`` (in RAM or a cached
    :class:`~interlude.data.ondisk.DiskImages`), their labels, whether every file was grayscale,
    the unreadable files (path relative to ``root``, reason), the bit depths found, exact pixel
    sums, and the cache entry it came from (None in RAM)."""

    root: Path
    images: Any
    labels: np.ndarray
    gray: bool
    skipped: list[tuple[str, str]]
    depths: DepthSummary
    sums: PixelSums
    spec: CacheSpec | None = None
    built: bool = True
    """False when the set was read from an existing cache entry (nothing decoded now)."""


def _in_order(root: Path, names: list[str], size: int, workers: int, interpolation: str
              ) -> Iterator[tuple[np.ndarray, bool, Depth] | str]:
    """``try_decode`` of every file, in file order, with at most a few hundred files in flight."""
    window = max(64, 32 * workers)
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        queue = iter(names)
        for name in queue:
            pending.append(pool.submit(try_decode, root / name, size, interpolation))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(try_decode, root / following, size, interpolation))
            yield result


def _decoder(root: Path, names: list[str], labels: list[int], size: int, workers: int,
             interpolation: str):
    """The build function of a folder set: decodes every file and writes the readable ones."""

    def build(writer: RowWriter) -> dict:
        kept: list[str] = []
        kept_labels: list[int] = []
        skipped: list[list[str]] = []
        depths = DepthSummary()
        gray = True
        batch: list[np.ndarray] = []
        for i, result in enumerate(_in_order(root, names, size, workers, interpolation)):
            rel = names[i]
            if isinstance(result, str):
                skipped.append([rel, result])
            else:
                batch.append(result[0])
                gray = gray and result[1]
                depths.add(result[2])
                kept.append(rel)
                kept_labels.append(labels[i])
            if len(batch) == _BATCH:
                writer.write(np.stack(batch))
                batch.clear()
            writer.progress(1)
        if batch:
            writer.write(np.stack(batch))
        return {"root": str(root), "files": kept, "labels": kept_labels, "gray": gray,
                "skipped": skipped, "depths": depths.to_json()}

    return build


def _info_checker(names: list[str], labels: list[int]):
    """Checks a cached set's info against the files scanned now (hostile-input rules)."""

    def check(info: Any, rows: int) -> None:
        kept, kept_labels, skipped = info["files"], info["labels"], info["skipped"]
        if not (isinstance(kept, list) and isinstance(kept_labels, list)
                and isinstance(skipped, list) and len(kept) == len(kept_labels) == rows):
            raise ValueError(f"file and label lists do not hold {rows} entries")
        if len(kept) + len(skipped) != len(names) or not isinstance(info["gray"], bool):
            raise ValueError("kept + skipped files do not match the folder")
        if rows == 0 and info["gray"] is not True:
            raise ValueError("an empty set must count as grayscale")
        order = {name: i for i, name in enumerate(names)}
        positions = [order.get(f, -1) if isinstance(f, str) else -1 for f in kept]
        steps = np.diff(np.asarray(positions, dtype=np.int64))
        if any(p < 0 for p in positions) or (steps <= 0).any():
            raise ValueError("kept files are not the folder's files in order")
        if [labels[p] for p in positions] != kept_labels:
            raise ValueError("labels differ from the folder's")
        for item in skipped:
            if (not isinstance(item, list) or len(item) != 2 or item[0] not in order
                    or not isinstance(item[1], str)):
                raise ValueError("skipped files are not [path, reason] of the folder's files")
        if DepthSummary.from_json(info["depths"]).count != rows:
            raise ValueError("bit-depth counts do not match the rows")

    return check


def _from_info(root: Path, images: Any, info: dict, sums: PixelSums,
               spec: CacheSpec | None, built: bool) -> FolderSet:
    return FolderSet(root, images, np.asarray(info["labels"], dtype=np.int64).reshape(-1),
                     info["gray"], [(p, why) for p, why in info["skipped"]],
                     DepthSummary.from_json(info["depths"]), sums, spec, built)


def decode_set(root: Path, names: list[str], signatures: list[str], labels: list[int],
               size: int, role: str, dataset: str, cache_dir: Path | None,
               workers: int = 0, interpolation: str = "bilinear") -> FolderSet:
    """Decode the files ``names`` (relative to ``root``, with their ``stat_signature``
    ``signatures`` and ``labels``) to RGB ``size`` x ``size``: from the cache in ``cache_dir``
    (built when missing or stale), or into RAM when it is None."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    build = _decoder(root, names, labels, size, workers, interpolation)
    shape = (3, size, size)
    if cache_dir is None:
        images, info, sums = build_in_memory(shape, len(names), f"decoding {dataset} {role}",
                                             build)
        return _from_info(root, images, info, sums, None, True)
    resolved = str(root.resolve())
    key = fingerprint([f"decoder {DECODER_VERSION}", f"size {size} {interpolation}", resolved, *(
        f"{name}\t{label}\t{signature}"
        for name, label, signature in zip(names, labels, signatures, strict=True))])
    slot = ("folder", resolved, role, str(size), interpolation)  # entries that replace each other
    spec = CacheSpec(f"{dataset}-{role}", slot, key, shape, len(names))
    entry = open_cached(cache_dir, spec, build, _info_checker(names, labels))
    return _from_info(root, entry.images, entry.info, entry.sums, spec, entry.built)


def as_luma(decoded: FolderSet, cache_dir: Path | None) -> Any:
    """The set's images as 1-channel luma: converted in RAM, or as a cache entry derived from
    its RGB entry (built once, chunk by chunk)."""
    if decoded.spec is None or cache_dir is None:
        return to_luma(decoded.images)
    rgb, spec = decoded.images, decoded.spec
    rows = len(rgb)

    chunk = rows_per_chunk(int(np.prod(spec.shape)))

    def build(writer: RowWriter) -> dict:
        for part in rgb.chunks(chunk):
            writer.write(to_luma(part))
            writer.progress(len(part))
        return {"from": spec.key}

    def check(info: Any, count: int) -> None:
        if info.get("from") != spec.key or count != rows:
            raise ValueError("not derived from this RGB entry")

    luma = CacheSpec(f"{spec.label}-luma", (*spec.source, "luma"), fingerprint([spec.key, "luma"]),
                     (1, *spec.shape[1:]), rows)
    return open_cached(cache_dir, luma, build, check).images
