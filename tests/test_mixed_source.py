"""Labeled, unlabeled and test images from different datasets (data.unlabeled_from/test_from)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from image_rows import pixels

from interlude.config import load_config
from interlude.data import build_data, register_dataset
from interlude.data.base import ImageSet, RawDataset
from interlude.data.sources import to_channels
from interlude.errors import ConfigError, DataError
from interlude.inference import evaluate_run
from interlude.train import run

# class k of the RGB set is a flat colour; its BT.601 luma, rounded, by hand:
# (200, 100, 50): 59.8 + 58.7 + 5.7 = 124.2 -> 124
# (10, 20, 30):    2.99 + 11.74 + 3.42 = 18.15 -> 18
# (0, 255, 0):     149.685 -> 150
COLOURS = [(200, 100, 50), (10, 20, 30), (0, 255, 0)]
LUMA = [124, 18, 150]
GREYS = [40, 120, 220]  # class k of the grey set is a flat grey level


def _flat(values: list, per_class: int, channels: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(len(values)), per_class)
    images = np.empty((len(labels), channels, size, size), dtype=np.uint8)
    for row, label in enumerate(labels):
        images[row] = np.asarray(values[label], dtype=np.uint8).reshape(-1, 1, 1)
    return images, labels


def _raw(name: str, values: list, channels: int, size: int, train: int, test: int) -> RawDataset:
    pool, pool_labels = _flat(values, train, channels, size)
    held, held_labels = _flat(values, test, channels, size)
    return RawDataset(name=name, train=ImageSet(pool, pool_labels),
                      test=ImageSet(held, held_labels), class_names=list("abcd"[:len(values)]),
                      mean=(0.25,) * channels, std=(0.5,) * channels, hflip=False)


@register_dataset("mix_grey8")
def _grey8(cfg):
    return _raw("mix_grey8", [[g] for g in GREYS], 1, 8, train=10, test=4)


@register_dataset("mix_rgb12")
def _rgb12(cfg):
    return _raw("mix_rgb12", COLOURS, 3, 12, train=7, test=5)


@register_dataset("mix_four")
def _four(cfg):
    return _raw("mix_four", [[10], [20], [30], [40]], 1, 8, train=5, test=2)


def _data(*overrides: str):
    return build_data(load_config(None, ["data.labels_per_class=2", *overrides]).data)


def test_rgb_to_grey_is_the_bt601_luma_by_hand():
    image = np.array([[[255, 0], [10, 200]],       # R of a 2x2 RGB image
                      [[0, 255], [20, 100]],       # G
                      [[0, 0], [30, 50]]], dtype=np.uint8)[None]  # B
    grey = to_channels(image, 1)
    # (255,0,0) 76.245 -> 76; (0,255,0) 149.685 -> 150; (10,20,30) 18.15 -> 18;
    # (200,100,50) 124.2 -> 124
    assert grey.dtype == np.uint8 and grey.shape == (1, 1, 2, 2)
    assert grey[0, 0].tolist() == [[76, 150], [18, 124]]


def test_grey_to_rgb_repeats_the_plane():
    image = np.array([[[[0, 7], [128, 255]]]], dtype=np.uint8)
    rgb = to_channels(image, 3)
    assert rgb.shape == (1, 3, 2, 2) and rgb.dtype == np.uint8
    for channel in range(3):
        assert rgb[0, channel].tolist() == [[0, 7], [128, 255]]


def test_grey_labeled_with_rgb_unlabeled_and_test():
    data = _data("data.name=mix_grey8", "data.unlabeled_from=mix_rgb12", "data.test_from=mix_rgb12")
    assert data.labeled.images.shape == (6, 1, 8, 8)
    assert data.unlabeled.images.shape == (21, 1, 8, 8)  # the whole RGB pool: 3 classes x 7
    assert data.test.images.shape == (15, 1, 8, 8)
    assert data.unlabeled.images.dtype == np.uint8
    for images in (data.unlabeled, data.test):  # flat colours stay flat when resized: pure luma
        for label in range(3):
            rows = images.images.read(images.labels == label)
            assert np.all(rows == LUMA[label])
    assert sorted(set(pixels(data.labeled.images).ravel().tolist())) == GREYS
    assert data.mean == (0.25,) and data.std == (0.5,)  # the labeled dataset's statistics
    assert data.split["sources"] == {"labeled": "mix_grey8", "unlabeled": "mix_rgb12",
                                     "test": "mix_rgb12"}
    assert data.split["unlabeled"] == list(range(21))
    assert data.split["train_pool_size"] == 30


def test_rgb_labeled_with_grey_unlabeled_at_a_resolution():
    data = _data("data.name=mix_rgb12", "data.unlabeled_from=mix_grey8", "data.resolution=6")
    assert data.labeled.images.shape == (6, 3, 6, 6)
    assert data.unlabeled.images.shape == (30, 3, 6, 6)
    assert data.test.images.shape == (15, 3, 6, 6)  # its own test set, resized
    for label, grey in enumerate(GREYS):
        assert np.all(data.unlabeled.images.read(data.unlabeled.labels == label) == grey)
    assert data.split["sources"]["test"] == "mix_rgb12"
    assert data.split["sources"]["unlabeled"] == "mix_grey8"


def test_test_from_alone_keeps_the_pool_remainder_unlabeled():
    data = _data("data.name=mix_grey8", "data.test_from=mix_rgb12")
    assert len(data.unlabeled) == 30 - 6
    assert data.test.images.shape == (15, 1, 8, 8)
    assert "unlabeled" not in data.split
    assert data.split["sources"]["test"] == "mix_rgb12"


def test_unset_or_same_sources_change_nothing():
    plain = _data("data.name=mix_grey8")
    same = _data("data.name=mix_grey8", "data.unlabeled_from=mix_grey8", "data.test_from=mix_grey8")
    assert plain.split == same.split and "sources" not in plain.split
    assert np.array_equal(pixels(plain.unlabeled.images), pixels(same.unlabeled.images))


def test_split_saved_and_reused_and_refused_for_other_sources(tmp_path):
    mixed = ["data.name=mix_grey8", "data.unlabeled_from=mix_rgb12", "data.test_from=mix_rgb12"]
    data = _data(*mixed, "data.data_seed=3")
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data.split))
    again = _data(*mixed, "data.data_seed=8", f"data.split_file={path}")
    assert {**again.split, "data_seed": 3} == data.split  # data_seed: the config's, unused
    assert np.array_equal(pixels(again.labeled.images), pixels(data.labeled.images))
    assert np.array_equal(again.unlabeled.labels, data.unlabeled.labels)

    for other in (["data.name=mix_grey8"], ["data.name=mix_grey8", "data.test_from=mix_rgb12"],
                  ["data.name=mix_grey8", "data.unlabeled_from=mix_rgb12"]):
        with pytest.raises(DataError, match="was made for sources labeled=.*mix_grey8.*not"):
            _data(*other, f"data.split_file={path}")
    path.write_text(json.dumps({**data.split, "unlabeled_pool_fingerprint": "0" * 24}))
    with pytest.raises(DataError, match="another unlabeled pool .*fingerprint differs"):
        _data(*mixed, f"data.split_file={path}")
    path.write_text(json.dumps({**data.split, "unlabeled_pool_size": 22}))
    with pytest.raises(DataError, match="unlabeled pool of 22 images, but this one has 21"):
        _data(*mixed, f"data.split_file={path}")

    plain = _data("data.name=mix_grey8")
    path.write_text(json.dumps(plain.split))  # a plain split for a mixed run
    with pytest.raises(DataError, match="sources labeled=.*unlabeled=.*mix_grey8.*not"):
        _data(*mixed, f"data.split_file={path}")


@pytest.mark.parametrize("bad, message", [
    ([0, 0, 1], "lists an index twice in 'unlabeled'"),
    ([0, 21], "'unlabeled' indices outside the unlabeled pool of 21 images"),
    ([True, 1], "needs 'unlabeled' as a list of integer indices"),
    ("all", "needs 'unlabeled' as a list of integer indices"),
    ([], "has no unlabeled index"),
])
def test_hostile_unlabeled_indices_are_refused(tmp_path, bad, message):
    mixed = ["data.name=mix_grey8", "data.unlabeled_from=mix_rgb12"]
    data = _data(*mixed)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({**data.split, "unlabeled": bad}))
    with pytest.raises(DataError, match=message):
        _data(*mixed, f"data.split_file={path}")


def test_reused_split_may_list_a_subset_of_the_unlabeled_pool(tmp_path):
    mixed = ["data.name=mix_grey8", "data.unlabeled_from=mix_rgb12"]
    data = _data(*mixed)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({**data.split, "unlabeled": [20, 0, 7]}))
    subset = _data(*mixed, f"data.split_file={path}")
    assert subset.unlabeled.labels.tolist() == [2, 0, 1]  # pool rows 20, 0, 7 (7 per class)
    assert subset.split["unlabeled"] == [20, 0, 7]


def test_class_count_mismatch_is_refused():
    with pytest.raises(DataError, match=r"data.unlabeled_from=mix_four has 4 classes but "
                                        r"mix_grey8 has 3"):
        _data("data.name=mix_grey8", "data.unlabeled_from=mix_four")
    with pytest.raises(DataError, match=r"data.test_from=mix_four has 4 classes but mix_rgb12 "
                                        r"has 3"):
        _data("data.name=mix_rgb12", "data.test_from=mix_four")


def test_unknown_source_is_refused():
    """Refused with the config, before any data is read: the names are registered datasets."""
    with pytest.raises(ConfigError, match="data.test_from='nope' is not valid: use one of .*digits"):
        _data("data.name=mix_grey8", "data.test_from=nope")


def test_open_set_with_unlabeled_from_is_refused_and_with_test_from_supported():
    with pytest.raises(ConfigError, match="data.unlabeled_from=.*mix_rgb12.* cannot be combined"):
        load_config(None, ["data.name=mix_grey8", "data.unlabeled_from=mix_rgb12",
                           "data.labeled_classes=[0,2]"])
    data = _data("data.name=mix_grey8", "data.test_from=mix_rgb12", "data.labeled_classes=[2,0]")
    assert data.num_classes == 2
    assert data.test.images.shape == (10, 1, 8, 8)  # the RGB test set's classes 2 and 0
    assert np.all(data.test.images.read(data.test.labels == 0) == LUMA[2])
    assert np.all(data.test.images.read(data.test.labels == 1) == LUMA[0])


def test_disk_backed_pool_needing_conversion_is_refused(tmp_path):
    path = tmp_path / "pool.u8"
    images, labels = _flat(COLOURS, 4, 3, 12)
    stored = np.memmap(path, dtype=np.uint8, mode="w+", shape=images.shape)
    stored[:] = images
    stored.flush()

    @register_dataset("mix_disk")
    def _disk(cfg):
        pool = np.memmap(path, dtype=np.uint8, mode="r", shape=images.shape)
        return RawDataset(name="mix_disk", train=ImageSet(pool, labels), test=None,
                          class_names=["a", "b", "c"], mean=(0.5,) * 3, std=(0.5,) * 3)

    with pytest.raises(DataError, match=r"data.unlabeled_from=mix_disk: 12 images kept on disk "
                                        r"at \(3, 12, 12\) would have to be converted to "
                                        r"\(1, 8, 8\) in memory"):
        _data("data.name=mix_grey8", "data.unlabeled_from=mix_disk")
    # at the run's geometry already, the disk-backed pool is used as it is (read by row)
    rgb = _data("data.name=mix_rgb12", "data.unlabeled_from=mix_disk")
    assert rgb.unlabeled.images.on_disk
    assert np.array_equal(pixels(rgb.unlabeled.images), images)
    with pytest.raises(DataError, match="data.test_from=mix_disk: that dataset has no test set"):
        _data("data.name=mix_rgb12", "data.test_from=mix_disk")


def test_digits_with_mnist5k():
    data = _data("data.name=digits", "data.unlabeled_from=mnist5k", "data.test_from=mnist5k",
                 "data.resolution=16")
    assert data.labeled.images.shape == (20, 1, 16, 16)
    assert data.unlabeled.images.shape == (4000, 1, 16, 16)  # mnist5k's pool: 5000 - 1000 test
    assert data.test.images.shape == (1000, 1, 16, 16)
    assert np.bincount(data.unlabeled.labels).tolist() == [400] * 10  # kept for diagnostics
    mirror = _data("data.name=mnist5k", "data.unlabeled_from=digits", "data.test_from=digits")
    assert mirror.labeled.images.shape[1:] == (1, 28, 28)  # mnist5k's native size
    assert mirror.unlabeled.images.shape == (1297, 1, 28, 28)
    assert mirror.test.images.shape == (500, 1, 28, 28)


def test_short_mixed_training_run_and_eval_reproduce_the_sources(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "data.unlabeled_from=mix_rgb12",
                             "data.test_from=mix_rgb12", "data.name=mix_grey8",
                             "data.labels_per_class=2", "model.arch=small_cnn"])
    result = run(cfg)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    split = json.loads((result.run_dir / "split.json").read_text())
    assert split["sources"] == {"labeled": "mix_grey8", "unlabeled": "mix_rgb12",
                                "test": "mix_rgb12"}
    assert 0.0 <= summary["last"]["test/ema/top1"] <= 1.0
    metrics = evaluate_run(result.run_dir)  # rebuilds the data from config + split.json
    assert np.asarray(metrics["confusion"]).sum(axis=1).tolist() == [5, 5, 5]  # the RGB test set
    assert metrics["top1"] == pytest.approx(summary["last"]["test/ema/top1"])


def test_suggest_refuses_a_pool_from_another_dataset(tiny_overrides):
    # its rows belong to another dataset's pool, which a labels file (indices into data.name's
    # training pool) cannot name: a CSV of suggestions would silently label the wrong images
    from interlude.errors import DataError
    from interlude.suggest import suggest_run

    cfg = load_config(None, [*tiny_overrides, "data.unlabeled_from=mix_rgb12", "data.name=mix_grey8",
                             "data.labels_per_class=2", "model.arch=small_cnn", "train.steps=3"])
    run_dir = run(cfg).run_dir
    with pytest.raises(DataError, match="come from another dataset \\(mix_rgb12\\)"):
        suggest_run(run_dir, n=2)
