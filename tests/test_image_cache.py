"""The image cache: reuse, invalidation, corrupt files, damaged entries, concurrent builders,
and identical data (and batches, and training) with and without it. Real PNG/JPEG files are
written here; the cache folder is the per-test one from conftest (``INTERLUDE_CACHE_DIR``)."""

from __future__ import annotations

import gc
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from image_rows import pixels
from PIL import Image
from test_datasets_folder import make_folders

from interlude.config import load_config
from interlude.data import build_data, folder_sets, load_raw
from interlude.data.ondisk import DiskImages
from interlude.errors import DataError
from interlude.train import build_trainer, run


def _cfg(root: Path, *overrides: str):
    keys = ["data.name=imagefolder", f"data.labeled_dir={root / 'labeled'}",
            f"data.unlabeled_dir={root / 'unlabeled'}", f"data.test_dir={root / 'test'}",
            "data.resolution=16"]
    return load_config(None, keys + list(overrides)).data


def _entries(cache: Path, suffix: str = ".u8") -> list[Path]:
    return sorted((cache / "images").glob(f"*{suffix}"))


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts files decoded (through the thread pool) from now on."""
    calls: list[Path] = []
    original = folder_sets.try_decode

    def counting(path, size, *args):
        calls.append(path)
        return original(path, size, *args)

    monkeypatch.setattr(folder_sets, "try_decode", counting)
    return calls


def _same_data(a, b) -> None:
    for name in ("labeled", "unlabeled", "test"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(pixels(x.images), pixels(y.images)), name
        assert np.array_equal(x.labels, y.labels), name
    assert a.mean == b.mean and a.std == b.std
    assert a.split == b.split


# ---------------------------------------------------------------------- reuse and invalidation
def test_second_load_reads_the_cache_and_decodes_nothing(tmp_path, image_cache, count_decodes):
    make_folders(tmp_path)
    first = build_data(_cfg(tmp_path))
    assert len(count_decodes) == 9 + 5 + 3  # labeled, unlabeled, test: each file once
    assert len(_entries(image_cache)) == 3 and len(_entries(image_cache, ".json")) == 3
    assert first.unlabeled.images.on_disk and first.test.images.on_disk
    count_decodes.clear()
    second = build_data(_cfg(tmp_path))
    assert count_decodes == []
    _same_data(first, second)
    meta = json.loads(next(p for p in _entries(image_cache, ".json")
                           if "unlabeled" in p.name).read_text())
    assert meta["shape"] == [5, 3, 16, 16]
    assert meta["info"]["files"] == ["a/u1.png", "a/u3.png", "b/deeper/u0.png",
                                     "b/deeper/u2.png", "b/deeper/u4.png"]


def test_file_added_removed_or_changed_rebuilds_that_folder_only(tmp_path, image_cache,
                                                                 count_decodes):
    make_folders(tmp_path)
    before = build_data(_cfg(tmp_path))
    unlabeled = tmp_path / "unlabeled"

    count_decodes.clear()
    Image.fromarray(np.full((16, 16, 3), 7, np.uint8)).save(unlabeled / "a" / "new.png")
    added = build_data(_cfg(tmp_path))
    assert len(added.unlabeled) == 6 and len(count_decodes) == 6  # that folder only
    assert any((pixels(added.unlabeled.images)[i] == 7).all() for i in range(6))

    count_decodes.clear()
    (unlabeled / "b" / "deeper" / "u0.png").unlink()
    removed = build_data(_cfg(tmp_path))
    assert len(removed.unlabeled) == 5 and len(count_decodes) == 5

    count_decodes.clear()
    changed_file = unlabeled / "a" / "u1.png"
    old_pixels = np.asarray(Image.open(changed_file)).copy()
    time.sleep(0.02)  # a new mtime even on coarse-clock file systems
    Image.fromarray(255 - old_pixels).save(changed_file)
    changed = build_data(_cfg(tmp_path))
    assert len(count_decodes) == 5
    index = 1  # a/new.png, a/u1.png, ... (u1 is 16x16: stored as it is)
    assert np.array_equal(changed.unlabeled.images.read([index]),
                          255 - removed.unlabeled.images.read([index]))
    assert np.array_equal(pixels(before.labeled.images), pixels(changed.labeled.images))
    # superseded entries still in use (the data objects above hold them) are kept ...
    assert len(_entries(image_cache)) == 3 + 3
    del before, added, removed, changed
    gc.collect()
    (unlabeled / "a" / "new.png").unlink()
    build_data(_cfg(tmp_path))
    # ... and pruned by the next build once nothing uses them: one entry per folder
    assert len(_entries(image_cache)) == 3


def test_resolution_and_grayscale_have_their_own_entries(tmp_path, image_cache):
    make_folders(tmp_path, gray=True, mixed=False)
    gray = build_data(_cfg(tmp_path))
    assert gray.unlabeled.images.shape[1:] == (1, 16, 16)
    assert sum("luma" in p.name for p in _entries(image_cache)) == 3  # derived once per folder
    big = build_data(_cfg(tmp_path, "data.resolution=24"))
    assert big.unlabeled.images.shape[1:] == (1, 24, 24)
    assert len(_entries(image_cache)) == 12  # two resolutions x (RGB + luma) x 3 folders
    again = build_data(_cfg(tmp_path))
    _same_data(gray, again)


# ---------------------------------------------------------------------- corrupt files
def test_corrupt_files_are_skipped_once_and_reported_from_the_cache(tmp_path, caplog,
                                                                    count_decodes):
    make_folders(tmp_path)
    bad = tmp_path / "unlabeled" / "a" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    with caplog.at_level(logging.INFO, logger="interlude"):
        first = build_data(_cfg(tmp_path))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "skipped 1 unreadable image(s)" in r.getMessage()]
    assert len(warnings) == 1 and "a/bad.jpg" in warnings[0].getMessage()
    assert bad in count_decodes and len(first.unlabeled) == 5
    count_decodes.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="interlude"):
        raw = load_raw(_cfg(tmp_path))
    assert count_decodes == []  # not tried again
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "found when the image cache was built" in caplog.text
    assert any("skipped 1 unreadable" in n and "a/bad.jpg" in n for n in raw.notes)


# ---------------------------------------------------------------------- damaged entries
@pytest.mark.parametrize("damage", ["garbage", "truncated", "shape", "labels", "sums",
                                    "forged-sums", "extra-row"])
def test_damaged_entry_is_rebuilt_with_a_warning_never_trusted(tmp_path, image_cache, caplog,
                                                               damage):
    make_folders(tmp_path)
    good = build_data(_cfg(tmp_path))
    meta_path = next(p for p in _entries(image_cache, ".json") if "labeled" in p.name)
    data_path = meta_path.with_suffix(".u8")
    meta = json.loads(meta_path.read_text())
    if damage == "garbage":
        meta_path.write_text("{not json")
    elif damage == "truncated":
        data_path.write_bytes(data_path.read_bytes()[:-10])
    elif damage == "shape":
        meta["shape"] = [9, 3, 16, "16"]
        meta_path.write_text(json.dumps(meta))
    elif damage == "labels":
        meta["info"]["labels"] = [2] * 9  # every image claimed by the last class
        meta_path.write_text(json.dumps(meta))
    elif damage == "sums":
        meta["sums"]["total"] = [-1, 0, 0]
        meta_path.write_text(json.dumps(meta))
    elif damage == "forged-sums":  # each within 0..255 x pixels, together impossible (issue 19)
        meta["sums"]["squares"] = [0, 0, 0]  # a variance below zero: sum(x)**2 > n * sum(x**2)
        meta_path.write_text(json.dumps(meta))
    else:  # one row more in both the file and the shape: the file list no longer matches
        data_path.write_bytes(data_path.read_bytes() + bytes(3 * 16 * 16))
        meta["shape"][0] += 1
        meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="interlude"):
        again = build_data(_cfg(tmp_path))
    assert "is damaged" in caplog.text and "rebuilding it" in caplog.text
    _same_data(good, again)
    assert json.loads(meta_path.read_text())["shape"] == [9, 3, 16, 16]


def test_interrupted_build_leaves_no_entry_and_its_temporary_is_cleaned(tmp_path, image_cache,
                                                                        monkeypatch):
    make_folders(tmp_path)
    original = folder_sets.try_decode
    seen = []

    def dies_midway(path, size, *args):
        seen.append(path)
        if len(seen) == 4:
            raise KeyboardInterrupt
        return original(path, size, *args)

    monkeypatch.setattr(folder_sets, "try_decode", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_data(_cfg(tmp_path))
    folder = image_cache / "images"
    assert _entries(image_cache) == [] and not list(folder.glob(".*.tmp"))
    monkeypatch.setattr(folder_sets, "try_decode", original)
    # what a kill -9 leaves: a temporary next to where the entry goes; the next build removes it
    orphan = folder / ".imagefolder-labeled-x.u8.abc.tmp"
    orphan.write_bytes(b"half")
    data = build_data(_cfg(tmp_path))
    assert len(data.labeled) == 9 and len(_entries(image_cache)) == 3
    stems = [p.name[: -len(".u8")] for p in _entries(image_cache)]
    for stem in stems:  # orphans of the entries built are gone
        assert not list(folder.glob(f".{stem}.u8.*.tmp"))


_BUILD_SCRIPT = """
import hashlib, logging, sys
import numpy as np
logging.basicConfig(level=logging.INFO, format="%(message)s")
from interlude.config import load_config
from interlude.data import build_data
cfg = load_config(None, sys.argv[1:]).data
data = build_data(cfg)
digest = hashlib.sha256(data.unlabeled.images.read(np.arange(len(data.unlabeled))).tobytes()).hexdigest()
print("DIGEST", digest, len(data.unlabeled), flush=True)
"""


def test_two_processes_building_the_same_cache_build_it_once(tmp_path, image_cache):
    make_folders(tmp_path, per_class=20)
    for i in range(300):  # enough files that the builds overlap
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)).save(
            tmp_path / "unlabeled" / "a" / f"n{i:03d}.png")
    args = [f"data.{k}={v}" for k, v in (("name", "imagefolder"),
                                         ("labeled_dir", tmp_path / "labeled"),
                                         ("unlabeled_dir", tmp_path / "unlabeled"),
                                         ("resolution", 16), ("decode_workers", 1))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    digests = [next(line for line in out.splitlines() if line.startswith("DIGEST"))
               for out in outputs]
    assert digests[0] == digests[1] and digests[0].endswith(" 305")
    for folder in ("labeled", "unlabeled"):  # one process built each, the other waited
        lines = [line for out in outputs for line in out.splitlines()]
        built = [line for line in lines if line.startswith(f"building the imagefolder-{folder} ")]
        assert len(built) == 1, outputs
    assert len(_entries(image_cache)) == 2
    assert not list((image_cache / "images").glob(".*.tmp"))


# ---------------------------------------------------------------------- same data, same batches
@pytest.mark.parametrize("gray", [False, True])
def test_cached_and_uncached_data_are_identical(tmp_path, gray):
    make_folders(tmp_path, gray=gray, mixed=not gray)
    cached = build_data(_cfg(tmp_path))
    in_ram = build_data(_cfg(tmp_path, "data.cache=false"))
    assert not in_ram.unlabeled.images.on_disk
    _same_data(cached, in_ram)
    assert load_raw(_cfg(tmp_path)).notes == load_raw(_cfg(tmp_path, "data.cache=false")).notes


def _train_overrides(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data.name=imagefolder", f"data.labeled_dir={root / 'labeled'}",
        f"data.unlabeled_dir={root / 'unlabeled'}", f"data.test_dir={root / 'test'}",
        "data.resolution=16", "model.width=8", "train.batch_size=4", "train.mu=2",
        "train.steps=4", "train.eval_interval=2", "train.log_interval=2",
        "train.checkpoint_interval=2", "train.progress=false", "train.device=cpu",
        f"train.out_dir={out}", *extra,
    ]


@pytest.mark.parametrize("augment_on", ["device", "workers"])
def test_cached_and_uncached_runs_see_identical_batches(tmp_path, augment_on):
    """Device augmentation, and a DataLoader worker process reading the cache file."""
    make_folders(tmp_path, per_class=4)
    extra = [f"train.augment_on={augment_on}", "train.num_workers=1"]
    batches = {}
    for cache in ("true", "false"):
        cfg = load_config(None, _train_overrides(tmp_path, tmp_path / cache, *extra,
                                                 f"data.cache={cache}"))
        data = build_data(cfg.data)
        trainer = build_trainer(cfg, tmp_path / cache / "run", data)
        batches[cache] = [trainer.batches.build(step) for step in range(3)]
        trainer.batches.close()
    for a, b in zip(batches["true"], batches["false"], strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.unlabeled_indices, b.unlabeled_indices)


def test_cached_and_uncached_training_end_with_the_same_weights(tmp_path):
    make_folders(tmp_path, per_class=4)
    states = {}
    for cache in ("true", "false"):
        cfg = load_config(None, _train_overrides(tmp_path, tmp_path / cache,
                                                 f"data.cache={cache}"))
        states[cache] = run(cfg).weights.model
    for key, value in states["true"].items():
        assert torch.equal(value, states["false"][key]), key


# ---------------------------------------------------------------------- reading rows
def test_disk_images_read_only_the_rows_asked(tmp_path, monkeypatch):
    reference = np.random.default_rng(0).integers(0, 256, (50, 2, 3, 4), dtype=np.uint8)
    path = tmp_path / "rows.u8"
    path.write_bytes(b"head" + reference.tobytes())
    disk = DiskImages(path, reference.shape, offset=4)
    assert len(disk) == 50 and disk.nbytes == reference.nbytes and disk.on_disk
    copy = pickle.loads(pickle.dumps(disk))  # a spawned worker reopens the file
    assert np.array_equal(copy.read([1, 2]), reference[[1, 2]])
    read = []
    original = DiskImages._read
    monkeypatch.setattr(DiskImages, "_read", lambda self, out, first: (
        read.append((first, len(out))), original(self, out, first))[1])
    disk.read(np.array([30, 10, 11, 12, 30]))
    assert sorted(read) == [(10, 3), (30, 1)]  # runs coalesced, duplicates read once
    read.clear()
    assert [len(c) for c in disk.chunks(20)] == [20, 20, 10]
    assert read == [(0, 20), (20, 20), (40, 10)]  # one read per chunk


def test_training_gathers_rows_from_disk_never_the_whole_pool(tmp_path, monkeypatch):
    """The unlabeled pool stays a disk-backed array in the trainer and a step reads only its
    rows: the RAM a run needs does not grow with the number of unlabeled images."""
    make_folders(tmp_path, per_class=4)
    for i in range(60):
        Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(
            tmp_path / "unlabeled" / "a" / f"x{i:02d}.png")
    cfg = load_config(None, _train_overrides(tmp_path, tmp_path / "runs"))
    data = build_data(cfg.data)
    trainer = build_trainer(cfg, tmp_path / "runs" / "r", data)
    store = trainer.batches.store
    assert not store.on_device and store.arrays[1].on_disk
    rows = []
    original = DiskImages._rows
    monkeypatch.setattr(DiskImages, "_rows", lambda self, index: (
        rows.append(len(index)), original(self, index))[1])
    trainer.batches.build(0)
    assert 0 < sum(rows) <= 4 * 2  # batch 4 x mu 2 unlabeled rows, nothing else
    assert store.offset == len(data.labeled)  # labeled rows first, then the step's unlabeled


def test_unusable_cache_folder_is_one_clear_error(tmp_path):
    make_folders(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DataError, match="cannot write the image cache in .*not-a-folder.*set "
                                        "data.cache_dir to a writable folder, or data.cache=false"):
        build_data(_cfg(tmp_path, f"data.cache_dir={blocker}"))
    assert build_data(_cfg(tmp_path, f"data.cache_dir={blocker}", "data.cache=false"))


def test_resize_filter_is_part_of_the_cache_key(tmp_path, image_cache, count_decodes):
    """A pretrained backbone's bicubic resize must not be served bilinear pixels from the cache."""
    make_folders(tmp_path)
    bilinear = build_data(_cfg(tmp_path))
    decoded = len(count_decodes)
    bicubic = build_data(_cfg(tmp_path, "data.interpolation=bicubic"))
    assert len(count_decodes) == 2 * decoded  # decoded again, into new entries
    assert len(_entries(image_cache)) == 6
    assert not np.array_equal(pixels(bilinear.unlabeled.images), pixels(bicubic.unlabeled.images))
    again = build_data(_cfg(tmp_path, "data.interpolation=bicubic"))
    assert len(count_decodes) == 2 * decoded  # reused
    assert np.array_equal(pixels(again.unlabeled.images), pixels(bicubic.unlabeled.images))


def test_orphan_of_a_superseded_entry_is_removed_when_its_replacement_is_built(
        tmp_path, image_cache):
    """A kill -9 during a build leaves a temporary of that key; once the folder's files change
    (a new key) nobody would ever build the old key again, so its replacement removes it."""
    make_folders(tmp_path)
    build_data(_cfg(tmp_path))
    folder = image_cache / "images"
    old = next(p for p in _entries(image_cache) if p.name.startswith("imagefolder-unlabeled-"))
    old_stem = old.name[: -len(".u8")]
    for suffix in (".u8", ".json"):  # as if the build of that key had been killed midway
        (folder / f"{old_stem}{suffix}").unlink()
    orphan = folder / f".{old_stem}.u8.k1ll3d.tmp"
    orphan.write_bytes(b"half of a big file")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "unlabeled" / "a" / "new.png")
    data = build_data(_cfg(tmp_path))  # another key for the unlabeled folder
    assert len(data.unlabeled) == 6
    assert not orphan.exists()
