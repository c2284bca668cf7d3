"""InterLUDEClassifier: scikit-learn conventions, input rules, bad input, warm start."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from PIL import Image
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError

from interlude import InterLUDEClassifier
from interlude.estimator import EXPECTED_FAILED_CHECKS

TINY = dict(steps=6, batch_size=8, mu=2, width=4, verbose=0, threads=1, device="cpu")


@pytest.fixture(scope="module")
def digits():
    """120 digits images (N, 8, 8) in [0, 1], 3 labels per class, the rest unlabeled (-1)."""
    bunch = load_digits()
    X, y = bunch.images[:120] / 16.0, bunch.target[:120]
    y_semi = np.full_like(y, -1)
    for c in range(10):
        first = np.flatnonzero(y == c)[:3]
        y_semi[first] = c
    return X, y, y_semi


@pytest.fixture(scope="module")
def fitted(digits):
    X, _, y_semi = digits
    return InterLUDEClassifier(**TINY).fit(X, y_semi)


def test_check_estimator_passes_where_it_applies():
    if tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 6):
        pytest.skip("expected_failed_checks needs scikit-learn >= 1.6")
    from sklearn.utils.estimator_checks import check_estimator

    clf = InterLUDEClassifier(steps=2, batch_size=4, mu=1, width=4, verbose=0, threads=1,
                              device="cpu")
    results = check_estimator(clf, on_fail=None, on_skip=None,
                              expected_failed_checks=EXPECTED_FAILED_CHECKS)
    failed = {r["check_name"]: repr(r["exception"])[:300] for r in results
              if r["status"] == "failed"}
    assert not failed
    assert len([r for r in results if r["status"] == "passed"]) > 40


def test_classes_of_any_value_and_probabilities(digits):
    X, _, y_semi = digits
    names = np.array([f"digit-{d}" for d in range(10)], dtype=object)
    y_named = np.where(y_semi == -1, -1, names[np.maximum(y_semi, 0)]).astype(object)
    clf = InterLUDEClassifier(**TINY).fit(X, y_named)
    assert list(clf.classes_) == sorted(names)
    proba = clf.predict_proba(X[:7])
    assert proba.shape == (7, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-10)
    assert set(clf.predict(X[:7])) <= set(names)
    assert (clf.predict(X[:7]) == clf.classes_[proba.argmax(1)]).all()


def test_integer_labels_need_not_be_0_to_k(digits):
    X, _, y_semi = digits
    y = np.where(y_semi == -1, -1, 100 + 7 * y_semi)
    clf = InterLUDEClassifier(**TINY).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, 100 + 7 * np.arange(10))


def test_float_scale_rule_and_uint8_agree(fitted, digits):
    X = digits[0]
    assert fitted.input_scale_ == 1.0  # max <= 1: taken as [0, 1]
    as_uint8 = np.round(X[:10] * 255).astype(np.uint8)
    np.testing.assert_allclose(fitted.predict_proba(X[:10]), fitted.predict_proba(as_uint8))
    with pytest.raises(ValueError, match=r"fitted on float images in \[0, 1\]"):
        fitted.predict(X[:10] * 255.0)


def test_layouts_flat_nhwc_and_files(tmp_path, digits):
    X, _, y_semi = digits
    flat = InterLUDEClassifier(**TINY).fit(X.reshape(len(X), 64), y_semi)
    assert flat.image_shape_ == (1, 8, 8) and flat.n_features_in_ == 64
    rgb = np.repeat(X[..., None], 3, axis=3)  # (N, H, W, 3)
    assert InterLUDEClassifier(**TINY).fit(rgb, y_semi).image_shape_ == (3, 8, 8)
    paths = []
    for i, image in enumerate(np.round(X[:30] * 255).astype(np.uint8)):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    clf = InterLUDEClassifier(resolution=8, **TINY).fit(paths, y_semi[:30])
    assert clf.image_shape_ == (1, 8, 8)  # gray files -> 1 channel
    assert clf.predict(paths[:4]).shape == (4,)


def test_fully_labeled_data_works(digits):
    X, y, _ = digits
    clf = InterLUDEClassifier(**TINY).fit(X[:40], y[:40])
    assert clf.predict(X[:3]).shape == (3,)


def test_params_roundtrip():
    clf = InterLUDEClassifier(steps=17, config={"algorithm.dc_variant": "cd"})
    assert clone(clf).get_params() == clf.get_params()
    assert clf.set_params(lr=0.1).lr == 0.1


def test_bad_config_value_names_the_key(digits):
    X, _, y_semi = digits
    with pytest.raises(ValueError, match=r"train.lr=-1.0 is out of range"):
        InterLUDEClassifier(**{**TINY, "lr": -1.0}).fit(X, y_semi)
    with pytest.raises(ValueError, match="unknown config key 'algorithm.tresh'"):
        InterLUDEClassifier(**TINY, config={"algorithm.tresh": 0.9}).fit(X, y_semi)


# ------------------------------------------------------------------ bad input
def test_predict_before_fit_is_not_fitted_error(digits):
    with pytest.raises(NotFittedError):
        InterLUDEClassifier().predict(digits[0][:2])


def test_all_unlabeled_y(digits):
    X = digits[0]
    with pytest.raises(ValueError, match="no labeled rows: every entry is -1"):
        InterLUDEClassifier(**TINY).fit(X, np.full(len(X), -1))


def test_nan_in_x(digits):
    X, _, y_semi = digits
    X = X.copy()
    X[3, 2, 2] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        InterLUDEClassifier(**TINY).fit(X, y_semi)


def test_shape_mismatches(digits, fitted):
    X, _, y_semi = digits
    with pytest.raises(ValueError, match="X has 120 images but y has 119 labels"):
        InterLUDEClassifier(**TINY).fit(X, y_semi[:-1])
    ragged = [np.zeros((8, 8)), np.zeros((8, 9))]
    with pytest.raises(ValueError, match="different shapes"):
        InterLUDEClassifier(**TINY).fit(ragged, [0, 1])
    with pytest.raises(ValueError, match=r"fitted on images of shape \(1, 8, 8\)"):
        fitted.predict(np.zeros((2, 9, 9)))
    with pytest.raises(ValueError, match="X has 81 features, but InterLUDEClassifier is expecting"):
        fitted.predict(np.zeros((2, 81)))


def test_other_bad_values(digits):
    X, _, y_semi = digits
    with pytest.raises(ValueError, match="only 1 class"):
        InterLUDEClassifier(**TINY).fit(X, np.where(y_semi == -1, -1, 3))
    with pytest.raises(ValueError, match="Negative values"):
        InterLUDEClassifier(**TINY).fit(X - 0.5, y_semi)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        InterLUDEClassifier(**TINY).fit((X * 1000).astype(np.int64), y_semi)
    with pytest.raises(ValueError, match="Unknown label type"):
        InterLUDEClassifier(**TINY).fit(X, np.linspace(0, 1, len(X)))


def test_failed_fit_leaves_fitted_model_untouched(fitted, digits):
    X = digits[0]
    before = fitted.predict_proba(X[:5])
    with pytest.raises(ValueError):
        fitted.fit(X, np.full(len(X), -1))
    np.testing.assert_array_equal(fitted.predict_proba(X[:5]), before)


# ------------------------------------------------------------------ training behaviour
def test_warm_start_continues_from_current_weights(digits):
    X, _, y_semi = digits
    clf = InterLUDEClassifier(**{**TINY, "steps": 3}, warm_start=True).fit(X, y_semi)
    first = {k: v.clone() for k, v in clf.checkpoint_.model.items()}
    clf.fit(X, y_semi)
    assert clf.n_iter_ == 6
    cold = InterLUDEClassifier(**{**TINY, "steps": 3}).fit(X, y_semi)
    assert cold.n_iter_ == 3
    for key, value in cold.checkpoint_.model.items():  # a cold refit starts over, warm does not
        if value.is_floating_point():
            assert key in first and np.allclose(value, first[key])
    assert any(not np.allclose(v, first[k]) for k, v in clf.checkpoint_.model.items()
               if v.is_floating_point())
    with pytest.raises(ValueError, match="warm_start=True continues the fitted model"):
        clf.fit(X[:, :7, :7], y_semi)


def test_progress_bar_only_when_verbose(digits, capsys):
    X, _, y_semi = digits
    InterLUDEClassifier(**TINY).fit(X, y_semi)
    assert capsys.readouterr().err == ""
    InterLUDEClassifier(**{**TINY, "verbose": 1}).fit(X, y_semi)
    assert "step" in capsys.readouterr().err


def test_same_seed_same_predictions(digits, fitted):
    X, _, y_semi = digits
    again = InterLUDEClassifier(**TINY).fit(X, y_semi)
    np.testing.assert_array_equal(again.predict_proba(X[:20]), fitted.predict_proba(X[:20]))
