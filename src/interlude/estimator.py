"""``InterLUDEClassifier``: the scikit-learn face of interlude, for users who never write a config.

It follows ``sklearn.semi_supervised``: ``fit(X, y)`` with ``y == -1`` on the unlabeled rows. Every
row with a label is used as a labeled example (the split is the user's, nothing is drawn), and the
rest form the unlabeled pool. Under the hood it is an ordinary interlude run: the arrays become an
in-memory :class:`~interlude.data.SSLData` (:mod:`interlude.data.arrays`), the constructor's
parameters become a :class:`~interlude.config.Config`, and :func:`interlude.train.run` trains it
in a run directory (a temporary one unless ``out_dir`` is given). The fitted network (the EMA copy
when ``ema_decay > 0``, as in evaluation) stays in memory for ``predict``.

Input rules (array layouts, value scales, image files) are those of :mod:`interlude.inputs`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from interlude.artifact import Checkpoint
from interlude.config import Config, DataConfig, load_config
from interlude.data.arrays import ESTIMATOR_DATASET, array_data
from interlude.data.base import UNLABELED
from interlude.data.transforms import resize_images
from interlude.errors import shown
from interlude.inference import Predictor, batched_logits, softmax
from interlude.inputs import is_path_list, read_images, to_uint8_images

DEFAULT_PATH_RESOLUTION = 32  # image files are decoded to this square size unless `resolution`

# Checks of sklearn.utils.estimator_checks that cannot pass for this estimator, and why. Pass it as
# `check_estimator(clf, expected_failed_checks=EXPECTED_FAILED_CHECKS)` (scikit-learn >= 1.6).
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_classifiers_classes": (
        "its last problem labels the two classes -1 and 1, but -1 marks unlabeled rows (the "
        "sklearn.semi_supervised convention), so only one class is labeled and fit refuses it"
    ),
}


class InterLUDEClassifier(ClassifierMixin, BaseEstimator):
    """Semi-supervised image classifier (InterLUDE by default), scikit-learn style.

    Parameters are flat config keys with small defaults that train the 8x8 ``load_digits`` images
    (40 labels) to about 93% test accuracy in 15-25 s on 2 CPU cores; raise ``steps``
    (and ``width``) for larger images. ``config`` takes any other key of ``interlude config keys``
    as ``{"algorithm.dc_variant": "cd", ...}`` and is applied last. ``arch="timm/<name>"`` with
    ``pretrained=True`` (timm's weights) or a weights file fine-tunes a timm backbone; images are
    then resized to its input size and normalised with its mean/std unless ``resolution`` or
    ``config`` says otherwise (as ``model.pretrained`` in a config file).

    ``fit(X, y)``: ``X`` is an array of images (see :mod:`interlude.inference` for the accepted
    layouts and the ``[0, 1]`` / ``[0, 255]`` float rule) or a list of image file paths; ``y`` holds
    labels of any type, ``-1`` marking unlabeled rows. Without unlabeled rows the labeled images also
    serve as the unlabeled pool (consistency regularisation on them), so fully labeled data works.
    ``warm_start=True`` makes the next ``fit`` continue from the current weights (fresh optimiser
    and schedule of ``steps`` steps) instead of starting over; classes and image shape must match.
    ``out_dir`` keeps the run directory (config, split, logs, checkpoints); a folder that already
    holds a run is refused unless ``overwrite=True``.
    """

    def __init__(
        self,
        algorithm: str = "interlude",
        steps: int = 600,
        batch_size: int = 16,
        mu: int = 4,
        lr: float = 0.03,
        weight_decay: float = 5e-4,
        ema_decay: float = 0.99,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        lambda_dc: float = 1.0,
        fusion_strength: float = 0.1,
        arch: str = "auto",
        pretrained: bool | str = False,
        width: int = 16,
        hflip: bool = False,
        resolution: int | None = None,
        config: dict[str, Any] | None = None,
        out_dir: str | None = None,
        random_state: int | np.random.RandomState | None = 0,
        device: str = "auto",
        threads: int = 0,
        verbose: int = 1,
        warm_start: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.algorithm = algorithm
        self.steps = steps
        self.batch_size = batch_size
        self.mu = mu
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema_decay = ema_decay
        self.threshold = threshold
        self.lambda_u = lambda_u
        self.lambda_dc = lambda_dc
        self.fusion_strength = fusion_strength
        self.arch = arch
        self.pretrained = pretrained
        self.width = width
        self.hflip = hflip
        self.resolution = resolution
        self.config = config
        self.out_dir = out_dir
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose
        self.warm_start = warm_start
        self.overwrite = overwrite

    # ------------------------------------------------------------------ scikit-learn protocol
    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True  # pixel values: negatives are rejected
        tags.input_tags.three_d_array = True  # (N, H, W) images
        tags.classifier_tags.poor_score = True  # tabular check data is not what a CNN is for
        return tags

    def fit(self, X: Any, y: Any) -> InterLUDEClassifier:
        """Train on images ``X`` with labels ``y`` (``-1`` = unlabeled).

        Nothing is changed on ``self`` until training has succeeded, so a failed ``fit`` leaves a
        fitted estimator as it was.
        """
        from interlude.train import resolve_inputs, run

        cfg = resolve_inputs(self._build_config())  # a pretrained backbone's size and mean/std
        inputs = self._validate_fit_input(X, y, cfg.data)
        previous = self._previous_fit()
        stats = (previous.meta.mean, previous.meta.std) if previous is not None else None
        data = array_data(inputs.images, inputs.labels, [str(c) for c in inputs.classes],
                          cfg.data, stats)
        cfg.train.mu = min(cfg.train.mu, len(data.unlabeled))  # tiny pools (scikit-learn checks)
        _check_warm_start(previous, data)
        with tempfile.TemporaryDirectory(prefix="interlude-") as tmp:
            run_dir = Path(self.out_dir) if self.out_dir is not None else Path(tmp) / "run"
            cfg.train.out_dir, cfg.train.run_name = str(run_dir.parent), run_dir.name
            result = run(cfg, data=data, overwrite=bool(self.overwrite), init=previous)
        self._set_fitted(inputs, result.weights, previous)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, K)``, columns in the order of ``classes_``."""
        return softmax(self._logits(X))

    def predict(self, X: Any) -> np.ndarray:
        logits = self._logits(X)  # first: it raises NotFittedError before fit
        return self.classes_[logits.argmax(axis=1)]

    def suggest(self, X_unlabeled: Any, n: int = 50, strategy: str = "hybrid",
                X_labeled: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` images of ``X_unlabeled`` to label next, best first, and their scores.

        Same ranking as ``interlude suggest`` (:mod:`interlude.suggest`): ``margin``,
        ``entropy``, ``coreset`` or ``hybrid`` (uncertain, then diverse). ``X_labeled``, the
        images already labeled, lets ``coreset``/``hybrid`` avoid suggesting their near-copies.
        Returns ``(indices into X_unlabeled, scores)``.
        """
        from interlude.suggest import Pool, suggest

        check_is_fitted(self)
        images = self._predict_images(X_unlabeled)
        labeled = self._predict_images(X_labeled) if X_labeled is not None else None
        meta = self.checkpoint_.meta
        found = suggest(self.model_, [str(c) for c in self.classes_], meta.mean, meta.std,
                        Pool(images=images), n, strategy, labeled, device=self._device(),
                        progress=bool(self.verbose))
        return found.rows, found.scores

    def predictor(self) -> Predictor:
        """The fitted model as a :class:`~interlude.inference.Predictor` (what ``load`` returns)."""
        check_is_fitted(self)
        meta = self.checkpoint_.meta
        return Predictor(self.model_, self.classes_, meta.image_shape, meta.mean, meta.std,
                         self._device())

    def export(self, out: str | Path, format: str = "safetensors") -> Path:
        """Write the fitted model for :func:`interlude.load` (see :mod:`interlude.export`)."""
        from interlude.export import export_checkpoint

        check_is_fitted(self)
        return export_checkpoint(self.checkpoint_, format, Path(out))

    # ------------------------------------------------------------------ input
    def _validate_fit_input(self, X: Any, y: Any, data_cfg: DataConfig) -> _FitInput:
        """uint8 images, labels encoded 0..K-1 (-1 unlabeled) and what predict must remember."""
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None; "
                "mark unlabeled rows with -1"
            )
        X, y = _as_input(X), column_or_1d(_as_labels(y), warn=True)
        n_images = _n_rows(X)
        if n_images != len(y):
            raise ValueError(f"X has {n_images} images but y has {len(y)} labels; they must match")
        inputs = self._fit_images(X, data_cfg)
        unlabeled = _unlabeled_mask(y)
        if unlabeled.all():
            raise ValueError(
                "y has no labeled rows: every entry is -1 (unlabeled); label at least one image "
                "of each class"
            )
        check_classification_targets(y[~unlabeled])
        inputs.classes = np.unique(y[~unlabeled])
        if len(inputs.classes) < 2:
            raise ValueError(
                f"y has labels of only 1 class ({shown(inputs.classes[0])}); a classifier needs "
                "labeled images of at least 2 classes"
            )
        inputs.labels = np.full(len(y), UNLABELED, dtype=np.int64)
        inputs.labels[~unlabeled] = np.searchsorted(inputs.classes, y[~unlabeled])
        return inputs

    def _fit_images(self, X: Any, data_cfg: DataConfig) -> _FitInput:
        resolution, interpolation = data_cfg.resolution, data_cfg.interpolation or "bilinear"
        if is_path_list(X):
            size = resolution or DEFAULT_PATH_RESOLUTION
            return _FitInput(read_images(list(X), None, size, size, interpolation))
        previous = self._previous_fit()
        images, scale = to_uint8_images(X, self.input_scale_ if previous is not None else None)
        inputs = _FitInput(images, scale=scale, input_shape=tuple(images.shape[1:]),
                           n_features=int(np.prod(np.shape(X)[1:])))
        if resolution is not None:
            inputs.images = resize_images(images, resolution, interpolation=interpolation)
        return inputs

    def _predict_images(self, X: Any) -> np.ndarray:
        channels, height, width = self.image_shape_
        interpolation = self.checkpoint_.meta.interpolation
        X = _as_input(X)
        if is_path_list(X):
            return read_images(list(X), channels, height, width, interpolation)
        if self.input_shape_ is None:  # fitted on files: arrays just need the channel count
            return self.predictor().images(X)
        images, _ = to_uint8_images(X, self.input_scale_)
        if np.ndim(X) == 2 and np.shape(X)[1] != self.n_features_in_:  # scikit-learn's wording
            raise ValueError(f"X has {np.shape(X)[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input.")
        if tuple(images.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"X holds images of shape {tuple(images.shape[1:])} (C, H, W), but "
                f"{type(self).__name__} was fitted on images of shape {self.input_shape_}"
            )
        return resize_images(images, (height, width), interpolation=interpolation)

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        images = self._predict_images(X)
        meta = self.checkpoint_.meta
        return batched_logits(self.model_, images, meta.mean, meta.std, 256, self._device())

    def _device(self) -> torch.device:
        return next(self.model_.parameters()).device

    # ------------------------------------------------------------------ training
    def _build_config(self) -> Config:
        """The run's Config; invalid values raise ConfigError (a ValueError) naming the key."""
        seed = self.random_state
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            seed = int(check_random_state(seed).randint(0, 2**31 - 1))
        interval = self.steps if isinstance(self.steps, int) and self.steps > 0 else 1
        overrides: dict[str, Any] = {
            "data.name": ESTIMATOR_DATASET, "data.hflip": self.hflip,
            "data.resolution": self.resolution,
            "model.arch": self.arch, "model.pretrained": self.pretrained,
            "model.width": self.width,
            "algorithm.name": self.algorithm, "algorithm.threshold": self.threshold,
            "algorithm.lambda_u": self.lambda_u, "algorithm.lambda_dc": self.lambda_dc,
            "algorithm.fusion_strength": self.fusion_strength,
            "train.steps": self.steps, "train.batch_size": self.batch_size, "train.mu": self.mu,
            "train.lr": self.lr, "train.weight_decay": self.weight_decay,
            "train.ema_decay": self.ema_decay, "train.seed": int(seed),
            "train.device": self.device, "train.threads": self.threads,
            "train.progress": bool(self.verbose),
            # no test/val set to evaluate: one evaluation and one checkpoint, at the end
            "train.eval_interval": interval, "train.checkpoint_interval": interval,
            "train.log_interval": min(50, interval),
            **dict(self.config or {}),
        }
        return load_config(None, overrides)

    def _previous_fit(self) -> Checkpoint | None:
        """The fitted weights a warm start continues from (None: start from scratch)."""
        return self.checkpoint_ if self.warm_start and hasattr(self, "checkpoint_") else None

    def _set_fitted(self, inputs: _FitInput, weights: Checkpoint,
                    previous: Checkpoint | None) -> None:
        self.classes_ = inputs.classes
        self.input_scale_ = inputs.scale
        self.input_shape_ = inputs.input_shape
        self.image_shape_ = tuple(int(v) for v in inputs.images.shape[1:])
        if inputs.n_features is not None:
            self.n_features_in_ = inputs.n_features
        else:  # fitted on files: there is no feature count to check
            self.__dict__.pop("n_features_in_", None)
        self.n_iter_ = weights.step + (previous.step if previous is not None else 0)
        weights.step = self.n_iter_
        self.checkpoint_ = weights
        self.model_ = weights.build_model(source="the fitted estimator").to(
            _resolved_device(self.device))
        self.run_dir_ = Path(self.out_dir) if self.out_dir is not None else None


@dataclass
class _FitInput:
    """What ``fit`` learned from X and y, kept aside until training succeeds."""

    images: np.ndarray
    scale: float | None = None
    input_shape: tuple[int, ...] | None = None
    n_features: int | None = None
    classes: np.ndarray = field(default_factory=lambda: np.empty(0))
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def _as_input(X: Any) -> Any:
    """Paths and lists pass through (ragged lists get a clear error later); the rest -> array."""
    if isinstance(X, (list, tuple)) or is_path_list(X):
        return X
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        return X  # rejected with a message that names sparse input
    return np.asarray(X)


def _n_rows(X: Any) -> int:
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    try:
        return len(X) if hasattr(X, "__len__") else int(np.shape(np.asarray(X))[0])
    except (TypeError, IndexError):
        raise ValueError(
            f"X must be an array of images or a list of image paths, got {type(X).__name__}"
        ) from None


def _check_warm_start(previous: Checkpoint | None, data) -> None:
    if previous is None:
        return
    meta = previous.meta
    if list(meta.class_names) != list(data.class_names) or meta.image_shape != data.image_shape:
        raise ValueError(
            "warm_start=True continues the fitted model, but the new data has other classes or "
            f"image shape ({data.class_names}, {data.image_shape}) than before "
            f"({list(meta.class_names)}, {meta.image_shape}); set warm_start=False"
        )


def _resolved_device(name: str) -> torch.device:
    from interlude.train import resolve_device

    return resolve_device(name)


def _as_labels(y: Any) -> np.ndarray:
    """``y`` as an array that keeps the integer -1 an integer.

    numpy turns a list mixing strings and numbers into strings, so ``["cat", "dog", -1]`` would
    make ``"-1"`` a class; such a list becomes an object array. A string ``"-1"`` among string
    labels is refused: it cannot be told from a class named "-1".
    """
    if isinstance(y, (list, tuple)):
        mixed = any(isinstance(v, str) for v in y) and any(not isinstance(v, str) for v in y)
        y = np.asarray(y, dtype=object) if mixed else np.asarray(y)
    y = np.asarray(y)  # array-likes (pandas, anything with __array__) as numpy converts them
    if y.dtype.kind == "U" and (y == str(UNLABELED)).any():
        raise ValueError("y holds the string '-1': mark unlabeled rows with the integer -1 (an "
                         "object array, or a list) or give that class another name")
    return y


def _unlabeled_mask(y: np.ndarray) -> np.ndarray:
    """Rows marked ``-1`` (numeric labels, or the integer -1 inside an object array)."""
    if y.dtype.kind in "iuf":
        return y == UNLABELED
    if y.dtype.kind == "O":
        return np.array(
            [isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and v == UNLABELED
             for v in y], dtype=bool,
        )
    return np.zeros(len(y), dtype=bool)  # string labels: nothing can be -1
