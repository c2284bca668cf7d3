"""Class-balanced labeled split: reproducible by data_seed, clear errors for impossible splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from image_rows import pixels

from interlude.config import load_config
from interlude.data import build_data
from interlude.data.splits import draw_split
from interlude.errors import DataError


def test_split_reproducible_and_seed_dependent():
    a = build_data(load_config(None, ["data.data_seed=0"]).data)
    b = build_data(load_config(None, ["data.data_seed=0"]).data)
    c = build_data(load_config(None, ["data.data_seed=1"]).data)
    assert a.split["labeled"] == b.split["labeled"]
    assert a.split["labeled"] != c.split["labeled"]
    assert np.array_equal(pixels(a.labeled.images), pixels(b.labeled.images))


def test_split_is_class_balanced_and_disjoint():
    data = build_data(load_config(None, ["data.labels_per_class=3", "data.val_per_class=2"]).data)
    assert np.bincount(data.labeled.labels).tolist() == [3] * 10
    assert np.bincount(data.val.labels).tolist() == [2] * 10
    assert not set(data.split["labeled"]) & set(data.split["val"])
    pool = data.split["train_pool_size"]
    assert len(data.unlabeled) == pool - 30 - 20


def test_test_set_does_not_depend_on_data_seed():
    a = build_data(load_config(None, ["data.data_seed=0"]).data)
    b = build_data(load_config(None, ["data.data_seed=5"]).data)
    assert np.array_equal(pixels(a.test.images), pixels(b.test.images))


def test_too_many_labels_per_class_is_a_clear_error():
    with pytest.raises(DataError, match="class '0' has .* images but 500 labeled"):
        build_data(load_config(None, ["data.labels_per_class=500"]).data)


def test_missing_class_in_pool():
    labels = np.array([0, 0, 0, 2, 2, 2])
    with pytest.raises(DataError, match="class '1' has no images"):
        draw_split(labels, 3, 1, 0, 0)


def test_split_file_reuse_and_missing_class(tmp_path):
    data = build_data(load_config(None, ["data.data_seed=3"]).data)
    path = tmp_path / "split.json"
    path.write_text(json.dumps(data.split))
    again = build_data(load_config(None, ["data.data_seed=9", f"data.split_file={path}"]).data)
    assert again.split["labeled"] == data.split["labeled"]
    broken = dict(data.split, labeled=data.split["labeled"][:4])  # drops most classes
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError, match="no image of class"):
        build_data(load_config(None, [f"data.split_file={path}"]).data)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        build_data(load_config(None, [f"data.split_file={path}"]).data)
