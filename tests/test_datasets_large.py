"""Large unlabeled splits through the image cache: SVHN's ``extra`` (read from real-format ``.mat``
files written here with scipy, compressed as the official ones and not) and STL-10's unlabeled
split, plus the streaming MAT v5 reader on hostile files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from image_rows import pixels
from test_datasets_standard import write_stl10, write_svhn

from interlude.config import load_config
from interlude.data import build_data, load_raw
from interlude.data.matfile import MatFormatError, open_uint8
from interlude.errors import DataError


def _cfg(*overrides: str):
    return load_config(None, list(overrides)).data


def write_svhn_extra(root: Path, n: int = 23, compress: bool = True) -> dict:
    """``extra_32x32.mat`` in the official layout: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    from scipy.io import savemat

    images = np.random.default_rng(11).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(-1, 1)
    savemat(root / "extra_32x32.mat", {"y": y, "X": images.transpose(2, 3, 1, 0)},
            do_compression=compress)
    return {"extra": images}


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images).float()
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


# --------------------------------------------------------------------------- SVHN extra
@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("cache", ["true", "false"])
def test_svhn_extra_joins_the_unlabeled_pool(tmp_path, compress, cache):
    ref = write_svhn(tmp_path)
    ref.update(write_svhn_extra(tmp_path, compress=compress))
    cfg = _cfg("data.name=svhn", f"data.data_dir={tmp_path}", "data.labels_per_class=2",
               "data.svhn_extra=true", f"data.cache={cache}")
    data = build_data(cfg)
    assert len(data.unlabeled) == (30 - 20) + 23  # train remainder, then every extra image
    assert data.unlabeled.images.on_disk == (cache == "true")
    extra = pixels(data.unlabeled.images)[np.arange(10, 33)]
    assert np.array_equal(extra, ref["extra"])  # H/W/C/N order and column-major undone
    assert (data.unlabeled.labels[10:] == -1).all()  # the extra labels are never used
    without = build_data(_cfg("data.name=svhn", f"data.data_dir={tmp_path}",
                              "data.labels_per_class=2"))
    assert len(without.unlabeled) == 10  # default: extra not used


def test_svhn_extra_is_resized_when_cached(tmp_path, image_cache):
    write_svhn(tmp_path)
    ref = write_svhn_extra(tmp_path, n=5)
    raw = load_raw(_cfg("data.name=svhn", f"data.data_dir={tmp_path}", "data.svhn_extra=true",
                        "data.resolution=20"))
    assert raw.extra_unlabeled.images.shape == (5, 3, 20, 20)  # cached at the run's size
    assert np.array_equal(pixels(raw.extra_unlabeled.images), _resized(ref["extra"], 20))
    data = build_data(_cfg("data.name=svhn", f"data.data_dir={tmp_path}",
                           "data.svhn_extra=true", "data.resolution=20",
                           "data.labels_per_class=1"))
    assert data.unlabeled.images.shape[1:] == (3, 20, 20) and len(data.unlabeled) == 25
    assert sorted(p.name.split("-")[0] for p in (image_cache / "images").glob("*.u8")) == [
        "svhn"]


def test_svhn_extra_missing_or_corrupt_names_the_file(tmp_path):
    write_svhn(tmp_path)
    args = ["data.name=svhn", f"data.data_dir={tmp_path}", "data.svhn_extra=true"]
    with pytest.raises(DataError, match=r"missing file\(s\) extra_32x32.mat.*extra_32x32.mat for "
                                        "data.svhn_extra=true"):
        load_raw(_cfg(*args))
    write_svhn_extra(tmp_path)
    path = tmp_path / "extra_32x32.mat"
    path.write_bytes(path.read_bytes()[:-200])  # truncated download
    with pytest.raises(DataError, match="extra_32x32.mat is not a readable SVHN .mat file"):
        load_raw(_cfg(*args))


# --------------------------------------------------------------------------- MAT v5 reader
def _mat_header(order: bytes = b"IM") -> bytes:
    return b"MATLAB 5.0 MAT-file, written by a test".ljust(116, b" ") + bytes(8) + \
        b"\x00\x01" + order


def _matrix(name: bytes, dims: tuple[int, ...], data: bytes, klass: int = 9,
            data_type: int = 2) -> bytes:
    def element(kind: int, payload: bytes) -> bytes:
        return struct.pack("<II", kind, len(payload)) + payload + bytes(-len(payload) % 8)

    body = (element(6, struct.pack("<II", klass, 0)) + element(5, struct.pack(f"<{len(dims)}i",
            *dims)) + element(1, name) + element(data_type, data))
    return struct.pack("<II", 14, len(body)) + body


def test_mat_reader_streams_plain_and_compressed_variables(tmp_path):
    data = bytes(range(256)) * 3 * 4 + bytes(3 * 32 * 32 * 2 - 3072)
    plain = _matrix(b"X", (32, 32, 3, 2), data)
    compressed = zlib.compress(plain)
    other = _matrix(b"y", (2, 1), b"\x01\x02")
    path = tmp_path / "m.mat"
    path.write_bytes(_mat_header() + other + struct.pack("<II", 15, len(compressed)) + compressed)
    with open_uint8(path, "X") as x:
        assert x.dims == (32, 32, 3, 2)
        assert x.read(100) + x.read(x.left) == data
        with pytest.raises(MatFormatError, match="past the array"):
            x.read(1)


@pytest.mark.parametrize("case, message", [
    ("not-mat", "no 'MATLAB' header"),
    ("hdf5", "v7.3"),
    ("order", "byte-order"),
    ("missing", "no variable 'X'"),
    ("double", "not a real uint8 array"),
    ("size", "expected 6144 bytes of miUINT8"),
    ("claims", "claims"),
    ("zlib", "corrupt compressed data"),
    ("short-zlib", "ends before the array"),
])
def test_mat_reader_refuses_hostile_files(tmp_path, case, message):
    good = _matrix(b"X", (32, 32, 3, 2), bytes(6144))
    header, body = _mat_header(), good
    if case == "not-mat":
        header = b"\x89PNG" + header[4:]
    elif case == "hdf5":
        header = b"MATLAB 7.3 MAT-file" + header[19:]
    elif case == "order":
        header = header[:126] + b"XX"
    elif case == "missing":
        body = _matrix(b"Y", (32, 32, 3, 2), bytes(6144))
    elif case == "double":
        body = _matrix(b"X", (32, 32, 3, 2), bytes(6144), klass=6)
    elif case == "size":
        body = _matrix(b"X", (32, 32, 3, 2), bytes(6000))
    elif case == "claims":
        body = struct.pack("<II", 14, 10**9) + good[8:]
    elif case == "zlib":
        body = struct.pack("<II", 15, 64) + b"\x78\x9c" + b"\xff" * 62
    else:  # a valid stream that stops half-way through the pixels
        cut = zlib.compress(good[: len(good) // 2])
        body = struct.pack("<II", 15, len(cut)) + cut
    path = tmp_path / "bad.mat"
    path.write_bytes(header + body)
    with pytest.raises(MatFormatError, match=message), open_uint8(path, "X") as x:
        x.read(x.left)


# --------------------------------------------------------------------------- STL-10
def test_stl10_unlabeled_is_cached_at_the_run_resolution(tmp_path, image_cache):
    ref = write_stl10(tmp_path)
    args = ["data.name=stl10", f"data.data_dir={tmp_path}", "data.labels_per_class=1"]
    raw = load_raw(_cfg(*args, "data.resolution=32"))
    assert raw.extra_unlabeled.images.shape == (7, 3, 32, 32) and raw.extra_unlabeled.images.on_disk
    assert np.array_equal(pixels(raw.extra_unlabeled.images), _resized(ref["unlabeled"], 32))
    # the open-set mix of STL-10 at 32 px: outliers (resized train images) join the cached split
    data = build_data(_cfg(*args, "data.resolution=32", "data.labeled_classes=[0,1,2,3,4,5]",
                           "data.outlier_ratio=0.2"))
    assert data.unlabeled.images.shape[1:] == (3, 32, 32)
    cached = build_data(_cfg(*args))
    uncached = build_data(_cfg(*args, "data.cache=false"))
    assert np.array_equal(pixels(cached.unlabeled.images),
                          pixels(uncached.unlabeled.images))


def test_stl10_unlabeled_is_resized_with_the_run_filter(tmp_path, image_cache):
    """A pretrained backbone's bicubic resize applies to the cached unlabeled split exactly as
    to the splits resized in RAM (and a bilinear entry is not served for it)."""
    from interlude.data.transforms import resize_images

    ref = write_stl10(tmp_path)
    args = ["data.name=stl10", f"data.data_dir={tmp_path}", "data.labels_per_class=1",
            "data.resolution=40"]
    bilinear = load_raw(_cfg(*args))
    bicubic = load_raw(_cfg(*args, "data.interpolation=bicubic"))
    expected = resize_images(ref["unlabeled"], 40, interpolation="bicubic")
    assert np.array_equal(pixels(bicubic.extra_unlabeled.images), expected)
    assert not np.array_equal(pixels(bilinear.extra_unlabeled.images), expected)
