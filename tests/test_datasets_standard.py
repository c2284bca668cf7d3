"""CIFAR-10/100, STL-10 and SVHN readers, tested on tiny files written here in the official formats.

The writers follow each dataset's published layout independently of the readers, and every image
is random (not symmetric), so a transposed or mirrored read fails the exact pixel comparisons.
"""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from image_rows import pixels

from interlude.config import load_config
from interlude.data import build_data, load_raw
from interlude.errors import DataError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


def _cfg(*overrides: str):
    return load_config(None, list(overrides)).data


def _images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _pickle(path: Path, tree: dict) -> None:
    path.write_bytes(pickle.dumps(tree, protocol=2))


# --------------------------------------------------------------------------- CIFAR writers
def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> dict[str, np.ndarray]:
    """data_batch_1..5, test_batch, batches.meta: rows of 3072 bytes = R, G, B planes, row-major."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = _images(5 * per_batch, seed=1)
    labels = np.arange(5 * per_batch) % 10
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        _pickle(folder / f"data_batch_{b + 1}", {
            b"batch_label": f"training batch {b + 1} of 5".encode(),
            b"labels": labels[rows].tolist(),
            b"data": train[rows].reshape(per_batch, 3072),
            b"filenames": [b"x.png"] * per_batch,
        })
    test = _images(n_test, seed=2)
    test_labels = (np.arange(n_test) * 3) % 10
    _pickle(folder / "test_batch", {b"labels": test_labels.tolist(),
                                    b"data": test.reshape(n_test, 3072)})
    _pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                      b"num_vis": 3072})
    return {"train": train, "labels": labels, "test": test, "test_labels": test_labels}


def write_cifar100(root: Path) -> dict[str, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train, labels = _images(200, seed=3), np.arange(200) % 100
    test, test_labels = _images(100, seed=4), np.arange(100)[::-1].copy()
    for name, x, y in (("train", train, labels), ("test", test, test_labels)):
        _pickle(folder / name, {b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(),
                                b"data": x.reshape(len(x), 3072)})
    _pickle(folder / "meta", {b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)],
                              b"coarse_label_names": [f"s{i}".encode() for i in range(20)]})
    return {"train": train, "labels": labels, "test": test, "test_labels": test_labels}


# --------------------------------------------------------------------------- CIFAR tests
def test_cifar10_reads_official_layout_and_splits_per_class(tmp_path):
    ref = write_cifar10(tmp_path)
    data = build_data(_cfg("data.name=cifar10", f"data.data_dir={tmp_path}",
                           "data.labels_per_class=2", "data.val_per_class=1"))
    assert data.class_names == CIFAR10_NAMES
    assert data.test.images.shape == (20, 3, 32, 32)
    assert np.array_equal(pixels(data.test.images), ref["test"])  # exact pixels: no transpose / flip
    assert np.array_equal(data.test.labels, ref["test_labels"])
    assert np.bincount(data.labeled.labels, minlength=10).tolist() == [2] * 10
    assert np.bincount(data.val.labels, minlength=10).tolist() == [1] * 10
    assert len(data.unlabeled) == 100 - 30
    first = data.split["labeled"][0]
    assert np.array_equal(pixels(data.labeled.images)[0], ref["train"][first])
    assert data.labeled.labels[0] == ref["labels"][first]
    assert data.hflip and data.mean == pytest.approx((0.4914, 0.4824, 0.4467), abs=1e-4)


def test_cifar10_same_data_seed_same_split(tmp_path):
    write_cifar10(tmp_path)
    base = ["data.name=cifar10", f"data.data_dir={tmp_path}", "data.labels_per_class=3"]
    a = build_data(_cfg(*base, "data.data_seed=4"))
    b = build_data(_cfg(*base, "data.data_seed=4"))
    c = build_data(_cfg(*base, "data.data_seed=5"))
    assert a.split["labeled"] == b.split["labeled"] != c.split["labeled"]
    assert np.array_equal(pixels(a.labeled.images), pixels(b.labeled.images))


def test_cifar_data_dir_may_name_the_extracted_folder(tmp_path):
    ref = write_cifar10(tmp_path)
    raw = load_raw(_cfg("data.name=cifar10", f"data.data_dir={tmp_path / 'cifar-10-batches-py'}"))
    assert np.array_equal(pixels(raw.train.images), ref["train"])


def test_cifar100_fine_labels_and_names(tmp_path):
    ref = write_cifar100(tmp_path)
    data = build_data(_cfg("data.name=cifar100", f"data.data_dir={tmp_path}",
                           "data.labels_per_class=1"))
    assert data.num_classes == 100 and data.class_names[7] == "c07"
    assert np.array_equal(data.test.labels, ref["test_labels"])
    assert np.array_equal(pixels(data.test.images), ref["test"])
    assert np.bincount(data.labeled.labels).tolist() == [1] * 100
    assert data.mean == pytest.approx((0.5071, 0.4867, 0.4408), abs=1e-4)


def test_cifar_pickle_from_numpy1_loads_but_code_is_refused(tmp_path):
    """The official files name numpy.core.multiarray; a pickle that imports os must not run."""
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert len(load_raw(_cfg("data.name=cifar10", f"data.data_dir={tmp_path}")).train) == 100

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    _pickle(path, {b"data": Evil(), b"labels": []})
    with pytest.raises(DataError, match="data_batch_1.*refusing to load .*print"):
        load_raw(_cfg("data.name=cifar10", f"data.data_dir={tmp_path}"))


def test_cifar_missing_file_names_file_directory_and_fix(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        load_raw(_cfg("data.name=cifar10", f"data.data_dir={tmp_path}"))
    message = str(err.value)
    assert "missing file(s) data_batch_3 " in message
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "cifar-10-python.tar.gz" in message and "data.download=true" in message
    assert "needs data_batch_1, data_batch_2" in message


def test_cifar_truncated_or_wrong_size_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_2 is not a readable CIFAR pickle"):
        load_raw(_cfg("data.name=cifar10", f"data.data_dir={tmp_path}"))
    _pickle(path, {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4})
    with pytest.raises(DataError, match=r"data_batch_2: 'data' must be a uint8 \(N, 3072\)"):
        load_raw(_cfg("data.name=cifar10", f"data.data_dir={tmp_path}"))


def test_download_without_torchvision_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DataError, match=r"pip install 'interlude\[vision\]'"):
        load_raw(_cfg("data.name=cifar10", f"data.data_dir={tmp_path}", "data.download=true"))


def test_download_fetches_with_torchvision_then_reads_with_our_reader(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:  # stands in for torchvision.datasets.CIFAR10: only writes the files
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            write_cifar10(Path(root))

    vision = types.ModuleType("torchvision")
    vision.datasets = types.SimpleNamespace(CIFAR10=FakeCIFAR10)
    monkeypatch.setitem(sys.modules, "torchvision", vision)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", vision.datasets)
    target = tmp_path / "cifar-10-batches-py"  # naming the folder itself downloads into parent
    raw = load_raw(_cfg("data.name=cifar10", f"data.data_dir={target}", "data.download=true"))
    assert calls == [(str(tmp_path), True, True)]
    assert len(raw.train) == 100 and raw.class_names == CIFAR10_NAMES


# --------------------------------------------------------------------------- STL-10
def _stl_bytes(images: np.ndarray) -> bytes:
    """Official layout: per image, channel by channel, each 96x96 channel in column-major order."""
    return b"".join(np.asfortranarray(channel).tobytes(order="F") for im in images
                    for channel in im)


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, n_unlabeled: int = 7) -> dict:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    ref = {"train": _images(n_train, 5, 96), "test": _images(n_test, 6, 96),
           "unlabeled": _images(n_unlabeled, 7, 96)}
    ref["train_y"] = (np.arange(n_train) % 10 + 1).astype(np.uint8)  # stored as 1..10
    ref["test_y"] = (np.arange(n_test)[::-1] % 10 + 1).astype(np.uint8)
    for split in ("train", "test", "unlabeled"):
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(ref[split]))
    for split in ("train", "test"):
        (folder / f"{split}_y.bin").write_bytes(ref[f"{split}_y"].tobytes())
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return ref


@pytest.mark.parametrize("cache", ["true", "false"])
def test_stl10_layout_labels_and_unlabeled_on_disk(tmp_path, cache):
    """The unlabeled split stays on disk: converted into the image cache, or memory-mapped."""
    ref = write_stl10(tmp_path)
    cfg = _cfg("data.name=stl10", f"data.data_dir={tmp_path}", "data.labels_per_class=1",
               f"data.cache={cache}")
    raw = load_raw(cfg)
    assert raw.extra_unlabeled.images.on_disk  # 100k images stay on disk
    assert np.array_equal(pixels(raw.train.images), ref["train"])  # catches a missing H/W transpose
    assert np.array_equal(raw.train.labels, ref["train_y"] - 1)  # 1..10 -> 0..9
    assert np.array_equal(raw.test.labels, ref["test_y"] - 1)
    assert np.array_equal(pixels(raw.extra_unlabeled.images), ref["unlabeled"])
    assert raw.class_names[7] == "monkey"
    data = build_data(cfg)
    assert np.bincount(data.labeled.labels).tolist() == [1] * 10
    assert len(data.unlabeled) == (20 - 10) + 7
    unlabeled = pixels(data.unlabeled.images)  # pool remainder first, then the (still mapped) extra split
    assert np.array_equal(unlabeled[10:17], ref["unlabeled"])
    assert np.array_equal(unlabeled[np.array([16, 12])], ref["unlabeled"][[6, 2]])
    assert np.array_equal(unlabeled[-1], ref["unlabeled"][-1])
    remainder = np.setdiff1d(np.arange(20), data.split["labeled"])
    assert np.array_equal(unlabeled[np.arange(10)], ref["train"][remainder])


def test_stl10_without_unlabeled_split_needs_no_unlabeled_file(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    data = build_data(_cfg("data.name=stl10", f"data.data_dir={tmp_path}",
                           "data.labels_per_class=1", "data.use_unlabeled_extra=false"))
    assert len(data.unlabeled) == 10
    with pytest.raises(DataError, match="missing file.s. unlabeled_X.bin"):
        load_raw(_cfg("data.name=stl10", f"data.data_dir={tmp_path}"))


def test_stl10_truncated_images_or_label_mismatch_name_the_file(tmp_path):
    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    x = folder / "test_X.bin"
    x.write_bytes(x.read_bytes()[:-100])
    with pytest.raises(DataError, match="test_X.bin has .* bytes, not a whole number"):
        load_raw(_cfg("data.name=stl10", f"data.data_dir={tmp_path}"))
    write_stl10(tmp_path / "again")
    (tmp_path / "again" / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(DataError, match="train_y.bin: 3 labels for 20 images"):
        load_raw(_cfg("data.name=stl10", f"data.data_dir={tmp_path / 'again'}"))


# --------------------------------------------------------------------------- SVHN
def write_svhn(root: Path, n_train: int = 30, n_test: int = 10) -> dict:
    from scipy.io import savemat

    ref = {}
    for split, n, seed in (("train", n_train, 8), ("test", n_test, 9)):
        images = _images(n, seed)
        y = (np.arange(n) % 10 + 1).astype(np.uint8)  # 1..10, where 10 is the digit 0
        savemat(root / f"{split}_32x32.mat",
                {"X": images.transpose(2, 3, 1, 0), "y": y.reshape(-1, 1)})  # (H, W, C, N)
        ref[split], ref[f"{split}_y"] = images, y
    return ref


def test_svhn_label_10_is_digit_0_and_pixels_round_trip(tmp_path):
    ref = write_svhn(tmp_path)
    data = build_data(_cfg("data.name=svhn", f"data.data_dir={tmp_path}",
                           "data.labels_per_class=2"))
    expected = ref["test_y"] % 10
    assert np.array_equal(data.test.labels, expected) and expected[9] == 0
    assert np.array_equal(pixels(data.test.images), ref["test"])
    assert np.bincount(data.labeled.labels).tolist() == [2] * 10
    assert data.hflip is False and data.class_names[0] == "0"


def test_svhn_missing_scipy_or_corrupt_file(tmp_path, monkeypatch):
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 10)
    with pytest.raises(DataError, match="test_32x32.mat is not a readable SVHN .mat file"):
        load_raw(_cfg("data.name=svhn", f"data.data_dir={tmp_path}"))
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DataError, match="pip install scipy"):
        load_raw(_cfg("data.name=svhn", f"data.data_dir={tmp_path}"))


def test_svhn_missing_files_lists_them(tmp_path):
    with pytest.raises(DataError, match="missing file.s. train_32x32.mat, test_32x32.mat"):
        load_raw(_cfg("data.name=svhn", f"data.data_dir={tmp_path}"))
