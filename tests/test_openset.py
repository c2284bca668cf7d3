"""Open-set unlabeled pools: kept classes relabeled, outliers at the requested ratio, seeded."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from image_rows import pixels
from PIL import Image

from interlude.config import load_config
from interlude.data import build_data, load_raw
from interlude.data.openset import make_open_set
from interlude.errors import DataError


def _cfg(*overrides: str):
    return load_config(None, ["data.name=digits", *overrides]).data


def _rows(images: np.ndarray) -> set[bytes]:
    return {im.tobytes() for im in images}


def test_kept_classes_are_relabeled_in_the_given_order():
    plain = load_raw(_cfg())
    data = build_data(_cfg("data.labeled_classes=[3,1,4]"))
    assert data.class_names == ["3", "1", "4"]
    assert np.bincount(data.labeled.labels).tolist() == [4, 4, 4]
    for new, old in enumerate([3, 1, 4]):  # test images of new class i are old class c
        assert np.array_equal(pixels(data.test.images)[data.test.labels == new],
                              pixels(plain.test.images)[plain.test.labels == old])
    assert _rows(pixels(data.labeled.images)[data.labeled.labels == 0]) <= _rows(
        pixels(plain.train.images)[plain.train.labels == 3])
    assert (data.unlabeled.labels >= 0).all()  # no outliers without outlier_ratio


def test_outliers_make_up_the_requested_share_and_come_from_other_classes():
    raw = load_raw(_cfg())
    data = build_data(_cfg("data.labeled_classes=[3,1,4]", "data.outlier_ratio=0.3"))
    outlier = data.unlabeled.labels == -1
    assert outlier.mean() == pytest.approx(0.3, abs=0.005)
    others = _rows(pixels(raw.train.images)[~np.isin(raw.train.labels, [3, 1, 4])])
    kept = _rows(pixels(raw.train.images)[np.isin(raw.train.labels, [3, 1, 4])])
    assert _rows(pixels(data.unlabeled.images)[outlier]) <= others
    assert _rows(pixels(data.unlabeled.images)[~outlier]) <= kept
    assert set(data.unlabeled.labels[~outlier].tolist()) == {0, 1, 2}


def test_outliers_follow_data_seed_and_are_noted():
    keys = ["data.labeled_classes=[0,1]", "data.outlier_ratio=0.5"]
    a = make_open_set(load_raw(_cfg()), _cfg(*keys))
    b = make_open_set(load_raw(_cfg()), _cfg(*keys))
    c = make_open_set(load_raw(_cfg()), _cfg(*keys, "data.data_seed=1"))
    assert np.array_equal(pixels(a.extra_unlabeled.images), pixels(b.extra_unlabeled.images))
    assert not np.array_equal(pixels(a.extra_unlabeled.images), pixels(c.extra_unlabeled.images))
    n_out = len(a.extra_unlabeled)
    assert n_out > 0 and any(f"{n_out} outlier images" in note for note in a.notes)


def test_too_few_outlier_images_thin_the_inliers_to_reach_the_ratio(caplog, tmp_path):
    # 6 of 10 classes cannot make 75% of a pool next to the whole in-class remainder: every
    # image of the other 4 is used and the in-class remainder is thinned, the labeled split kept
    keep = "data.labeled_classes=[0,1,2,3,4,5]"
    raw = load_raw(_cfg())
    others = int((~np.isin(raw.train.labels, range(6))).sum())
    plain = build_data(_cfg(keep))
    with caplog.at_level(logging.INFO, logger="interlude"):
        data = build_data(_cfg(keep, "data.outlier_ratio=0.75"))
    outlier = data.unlabeled.labels == -1
    inliers = int(others * 0.25 / 0.75)
    assert int(outlier.sum()) == round(inliers * 3) and int((~outlier).sum()) == inliers
    assert outlier.mean() == pytest.approx(0.75, abs=0.002)
    assert f"thinned from {len(plain.unlabeled)} to {inliers}" in caplog.text
    assert data.split["labeled"] == plain.split["labeled"]  # the same labeled images
    assert _rows(pixels(data.unlabeled.images)[~outlier]) <= _rows(pixels(plain.unlabeled.images))
    assert data.split["inlier_unlabeled_limit"] == inliers
    again = build_data(_cfg(keep, "data.outlier_ratio=0.75"))  # the same rows every time
    assert np.array_equal(pixels(again.unlabeled.images), pixels(data.unlabeled.images))
    reseeded = build_data(_cfg(keep, "data.outlier_ratio=0.75", "data.data_seed=1"))
    assert not np.array_equal(pixels(reseeded.unlabeled.images), pixels(data.unlabeled.images))


def test_a_ratio_no_thinning_can_reach_is_one_line(tmp_path):
    for label in range(3):  # an image folder: its unlabeled folder counts as in-class
        for i in range(4):
            path = tmp_path / "labeled" / str(label) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 60 * label + i, np.uint8)).save(path)
    for i in range(20):
        path = tmp_path / "unlabeled" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(path)
    cfg = load_config(None, ["data.name=imagefolder", f"data.labeled_dir={tmp_path / 'labeled'}",
                             f"data.unlabeled_dir={tmp_path / 'unlabeled'}", "data.cache=false",
                             "data.labeled_classes=[0,1]", "data.outlier_ratio=0.9"]).data
    with pytest.raises(DataError, match="outlier_ratio=0.9 cannot be reached"):
        build_data(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.labeled_classes=[1,12]"], "12 not a class index of digits .0..9"),
        (["data.labeled_classes=[2,2,5]"], "lists 2 twice"),
        (["data.labeled_classes=[4]"], "at least 2 classes"),
        (["data.outlier_ratio=0.2"], "outlier_ratio needs data.labeled_classes"),
    ],
)
def test_bad_open_set_settings_are_clear_errors(overrides, message):
    with pytest.raises(DataError, match=message):
        build_data(_cfg(*overrides))


def test_open_set_on_an_image_folder_keeps_every_labeled_image(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        for i in range(3):
            path = tmp_path / "labeled" / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    (tmp_path / "unlabeled").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "unlabeled" / f"{i}.png")
    folder = [
        "data.name=imagefolder", f"data.labeled_dir={tmp_path / 'labeled'}",
        f"data.unlabeled_dir={tmp_path / 'unlabeled'}", "data.resolution=8",
    ]
    data = build_data(load_config(None, [
        *folder, "data.labeled_classes=[2,0]", "data.outlier_ratio=0.25"]).data)
    assert data.class_names == ["c", "a"]
    assert np.bincount(data.labeled.labels).tolist() == [3, 3]
    # the 6 unlabeled_dir images count as in-distribution: 2 outliers make 25%
    assert len(data.unlabeled) == 6 + 2
    raw = load_raw(load_config(None, folder).data)
    class_b = _rows(pixels(raw.train.images)[raw.train.labels == 1])
    assert len(_rows(pixels(data.unlabeled.images)) & class_b) == 2
