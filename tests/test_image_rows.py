"""The image-rows protocol: every backing (in-memory array, memory map, image cache file,
concatenation, window) reads the same rows as the in-memory reference, and none can be read whole
by accident."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from interlude.data.base import ImageSet
from interlude.data.ondisk import DiskImages
from interlude.data.rows import (
    REFUSED,
    ArrayRows,
    ConcatRows,
    ImageRows,
    WindowRows,
    as_rows,
    concat_rows,
)
from interlude.errors import DataError

REFERENCE = np.random.default_rng(0).integers(0, 256, (23, 2, 3, 4), dtype=np.uint8)


def _disk(tmp_path, array: np.ndarray) -> DiskImages:
    path = tmp_path / f"rows{len(list(tmp_path.glob('rows*.u8')))}.u8"  # one file per set
    path.write_bytes(b"head" + array.tobytes())
    return DiskImages(path, array.shape, offset=4)


def _memmap(tmp_path, array: np.ndarray) -> np.memmap:
    path = tmp_path / "mapped.u8"
    path.write_bytes(array.tobytes())
    return np.memmap(path, dtype=np.uint8, mode="r", shape=array.shape)


def _backings(tmp_path) -> dict[str, tuple[ImageRows, np.ndarray, bool]]:
    """name -> (rows, the in-memory reference they must read as, on_disk)."""
    r = REFERENCE
    transposed = np.ascontiguousarray(r.transpose(0, 1, 3, 2))  # as STL-10 stores its files
    return {
        "array": (ArrayRows(r), r, False),
        "memmap view": (ArrayRows(_memmap(tmp_path, transposed).transpose(0, 1, 3, 2)), r, True),
        "disk": (_disk(tmp_path, r), r, True),
        "concat": (ConcatRows([ArrayRows(r[:5]), _disk(tmp_path, r[5:17]), ArrayRows(r[17:])]),
                   r, True),
        "window of disk": (_disk(tmp_path, r).window(4, 19), r[4:19], True),
        "window of concat": (ConcatRows([ArrayRows(r[:9]), _disk(tmp_path, r[9:])]).window(6, 15),
                             r[6:15], True),
        "window of window": (WindowRows(_disk(tmp_path, r), 2, 20).window(3, 11), r[5:13], True),
        "window of array": (ArrayRows(r).window(7, 23), r[7:], False),
    }


@pytest.mark.parametrize("name", ["array", "memmap view", "disk", "concat", "window of disk",
                                  "window of concat", "window of window", "window of array"])
def test_every_backing_reads_the_rows_of_its_reference(tmp_path, name):
    rows, reference, on_disk = _backings(tmp_path)[name]
    n = len(reference)
    assert isinstance(rows, ImageRows) and rows.on_disk is on_disk
    assert len(rows) == n and tuple(rows.shape) == reference.shape
    assert rows.dtype == np.uint8 and rows.nbytes == reference.nbytes
    for index in ([n - 1, 0, 3, 3, 1, n - 1, 2], [2, 3, 4], [0], [], np.arange(n)[::-1], [-1, -n],
                  np.array([5, 5, 5], dtype=np.int32), torch.tensor([4, 1]).numpy()):
        got = rows.read(index)
        expected = reference[np.asarray(index, dtype=np.int64)]
        assert type(got) is np.ndarray and got.flags.c_contiguous, index
        assert got.shape == expected.shape and np.array_equal(got, expected), index
    mask = np.arange(n) % 3 == 1
    assert np.array_equal(rows.read(mask), reference[mask])
    got = rows.read([1, 2])
    got[:] = 0  # a new array: writing into it leaves the rows alone
    assert np.array_equal(rows.read([1, 2]), reference[[1, 2]])
    for bad in ([n], [-n - 1], [0, n], np.array([0.5])):
        with pytest.raises(IndexError):
            rows.read(bad)
    with pytest.raises(IndexError):
        rows.read(np.ones(n + 1, dtype=bool))
    chunks = list(rows.chunks(4))
    assert [len(c) for c in chunks] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert np.array_equal(np.concatenate(chunks), reference)
    window = rows.window(2, n - 1)
    assert len(window) == n - 3 and np.array_equal(window.read([0, n - 4, 1, 0]),
                                                   reference[[2, n - 2, 3, 2]])
    with pytest.raises(IndexError):
        rows.window(0, n + 1)
    copy = pickle.loads(pickle.dumps(rows))  # what a spawned DataLoader worker receives
    assert np.array_equal(copy.read([n - 1, 0]), reference[[n - 1, 0]])


@pytest.mark.parametrize("name", ["array", "memmap view", "disk", "concat", "window of disk"])
def test_reading_a_whole_set_by_accident_is_refused(tmp_path, monkeypatch, name):
    rows, _, _ = _backings(tmp_path)[name]
    read: list[int] = []
    original = DiskImages._read
    monkeypatch.setattr(DiskImages, "_read", lambda self, out, first: (
        read.append(len(out)), original(self, out, first))[1])
    accidents = [lambda: np.asarray(rows), lambda: np.array(rows), lambda: rows[:],
                 lambda: rows[0], lambda: rows[np.arange(3)], lambda: np.concatenate([rows]),
                 lambda: list(rows), lambda: np.stack([rows])]
    for accident in accidents:
        with pytest.raises(TypeError) as refused:
            accident()
        assert str(refused.value) == REFUSED
    with pytest.raises(ValueError, match="could not determine the shape"):
        torch.as_tensor(rows)  # torch finds no array or sequence in it either
    assert read == []  # refused before a byte was read


def test_a_dataset_keeps_its_cache_on_disk_and_refuses_full_reads(tmp_path):
    images = ImageSet(_disk(tmp_path, REFERENCE), np.zeros(len(REFERENCE), dtype=np.int64))
    assert images.images.on_disk and images.shape == (2, 3, 4)
    with pytest.raises(TypeError, match="read with .read"):
        np.asarray(images.images)
    subset = images.subset(np.array([7, 2, 7]))  # read on purpose: into RAM
    assert not subset.images.on_disk and np.array_equal(subset.images.read([0, 1, 2]),
                                                        REFERENCE[[7, 2, 7]])


def test_image_sets_wrap_arrays_and_refuse_other_objects():
    wrapped = ImageSet(REFERENCE, np.zeros(len(REFERENCE)))
    assert isinstance(wrapped.images, ArrayRows) and wrapped.images.array is REFERENCE
    assert as_rows(wrapped.images) is wrapped.images
    with pytest.raises(DataError, match="numpy array or image rows, got list"):
        ImageSet([[0]], np.zeros(1))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="must be uint8"):
        ImageSet(REFERENCE.astype(np.int16), np.zeros(len(REFERENCE)))
    with pytest.raises(DataError, match=r"must be \(N, C, H, W\)"):
        ImageSet(REFERENCE[0], np.zeros(2))


def test_concatenation_stays_lazy_only_when_a_part_is_on_disk(tmp_path):
    r = REFERENCE
    in_ram = concat_rows([ArrayRows(r[:4]), concat_rows([ArrayRows(r[4:9]), ArrayRows(r[9:])])])
    assert isinstance(in_ram, ArrayRows) and np.array_equal(in_ram.array, r)  # plain indexing
    mixed = concat_rows([ArrayRows(r[:4]), concat_rows([_disk(tmp_path, r[4:9]),
                                                        ArrayRows(r[9:])])])
    assert isinstance(mixed, ConcatRows) and len(mixed.parts) == 3  # flattened, not nested
    assert mixed.on_disk and np.array_equal(mixed.read([22, 0, 4, 8, 9]), r[[22, 0, 4, 8, 9]])
