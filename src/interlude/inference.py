"""Using a trained model: input conversion, batched prediction, ``interlude eval`` and ``predict``.

Everything that turns user input (arrays of any common image layout, or image files) into the
uint8 ``(N, C, H, W)`` images a network was trained on lives here, so the estimator, the CLI and
exported models apply *one* set of rules:

- **files** are decoded exactly as the ``imagefolder`` loader does (EXIF rotation, RGB, bilinear
  resize to the model's resolution, luma for 1-channel models), so a prediction sees the same
  pixels training did;
- **arrays** may be ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` with ``C`` in 1 or 3, or
  ``(N, F)`` rows of flattened square grayscale images (``load_digits().data``: 64 = 8x8; a row
  whose length is not a square ``s*s >= 16`` is zero-padded to the next one, so any numeric table
  is accepted);
- **values**: integers must lie in 0..255; floats must be finite and non-negative and are taken as
  ``[0, 1]`` when their maximum is at most 1, else as ``[0, 255]`` (a model remembers the scale it
  was fitted with and applies it to later inputs, so a dark batch is not mistaken for another
  scale).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from interlude.data.transforms import resize_images
from interlude.errors import CheckpointError, DataError

MIN_SIDE = 4  # the augmentations need images of at least 3x3; the config floor is 4
ESTIMATOR_DATASET = "arrays"  # data.name of runs trained by InterLUDEClassifier from arrays

Model = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- files
def is_path_list(X: Any) -> bool:
    """Whether ``X`` is a sequence of file paths (not an array of numbers)."""
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.dtype.kind in "UO" and len(X) > 0 and all(
            isinstance(v, (str, os.PathLike)) for v in X
        )
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(
        isinstance(v, (str, os.PathLike)) for v in X
    )


def read_image(path: str | os.PathLike, channels: int, height: int, width: int) -> np.ndarray:
    """One image file as uint8 ``(channels, height, width)``, decoded as the imagefolder loader."""
    from interlude.data.folder import _to_luma, decode_image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        rgb, _ = decode_image(path, (height, width))
    except Exception as exc:  # PIL raises many types for damaged or non-image files
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return _to_luma(rgb[None])[0] if channels == 1 else rgb


def read_images(
    paths: Sequence[str | os.PathLike], channels: int | None, height: int, width: int
) -> np.ndarray:
    """Image files as uint8 ``(N, C, H, W)``; ``channels=None`` picks 1 when every file is gray."""
    from interlude.data.folder import _to_luma

    rgb = np.stack([read_image(p, 3, height, width) for p in paths])
    if channels is None:
        gray = all((im[0] == im[1]).all() and (im[1] == im[2]).all() for im in rgb)
        channels = 1 if gray else 3
    return _to_luma(rgb) if channels == 1 else rgb


# ----------------------------------------------------------------------------- arrays
def to_uint8_images(X: Any, scale: float | None = None) -> tuple[np.ndarray, float | None]:
    """Convert an array-like of images to uint8 ``(N, C, H, W)`` (rules in the module docstring).

    Returns the images and the float scale used (1 or 255; ``None`` for integer input). Pass the
    scale returned at fit time back in at predict time.
    """
    array = _as_numeric_array(X)
    images = _to_nchw(array)
    if array.dtype.kind == "f":
        scale = _float_scale(images, scale)
        images = np.clip(np.round(images * (255.0 / scale)), 0, 255)
    else:
        scale = None
        _check_integer_range(images)
    return np.ascontiguousarray(images.astype(np.uint8)), scale


def _as_numeric_array(X: Any) -> np.ndarray:
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError("sparse input is not supported: pass dense images (X.toarray())")
    if isinstance(X, (list, tuple)) and X and hasattr(X[0], "shape"):
        shapes = {tuple(np.shape(x)) for x in X}
        if len(shapes) > 1:
            raise ValueError(
                f"the images in X have different shapes ({', '.join(map(str, sorted(shapes)[:4]))}"
                "); resize them to one shape, or pass file paths (they are resized on load)"
            )
    array = np.asarray(X)
    if array.dtype.kind == "c":
        raise ValueError("Complex data not supported: images must be real numbers")
    if array.dtype.kind in "OUS":
        array = array.astype(np.float64)  # raises TypeError for non-numbers, as scikit-learn
    if array.dtype.kind == "b":
        array = array.astype(np.float64)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"X must hold numbers (images), got dtype {array.dtype}")
    return array


def _to_nchw(array: np.ndarray) -> np.ndarray:
    if array.ndim < 2 or array.ndim > 4:
        raise ValueError(
            f"Expected 2D (flattened images), 3D (N, H, W) or 4D (N, C, H, W) array, got "
            f"{array.ndim}D array of shape {array.shape}. Reshape your data: a single image "
            "needs a leading axis of 1, e.g. X[None]"
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={array.shape}) while a minimum of 1 is required."
        )
    if array.ndim == 2:
        return _flat_rows_to_images(array)
    if array.ndim == 3:
        images = array[:, None]
    elif array.shape[1] in (1, 3):
        images = array
    elif array.shape[3] in (1, 3):
        images = array.transpose(0, 3, 1, 2)
    else:
        raise ValueError(
            f"images of shape {array.shape[1:]} have neither 1 nor 3 channels first or last; "
            "pass (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 (gray) or 3 (RGB)"
        )
    _check_finite(images)
    if min(images.shape[2:]) < MIN_SIDE:
        raise ValueError(
            f"images of {images.shape[2]}x{images.shape[3]} pixels are too small; they need at "
            f"least {MIN_SIDE}x{MIN_SIDE} (set resolution= to upscale them)"
        )
    return images


def _flat_rows_to_images(array: np.ndarray) -> np.ndarray:
    """``(N, F)`` rows -> ``(N, 1, s, s)``: square side ``s``, zero-padded when F is not s*s."""
    n, features = array.shape
    if features == 0:
        raise ValueError(
            f"0 feature(s) (shape={array.shape}) while a minimum of 1 is required."
        )
    _check_finite(array)
    side = max(MIN_SIDE, math.isqrt(features - 1) + 1)
    padded = np.zeros((n, side * side), dtype=array.dtype)
    padded[:, :features] = array
    return padded.reshape(n, 1, side, side)


def _check_finite(array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        what = "NaN" if np.isnan(array).any() else "infinity"
        raise ValueError(f"Input X contains {what}: images must hold finite pixel values")


def _float_scale(images: np.ndarray, scale: float | None) -> float:
    low, high = float(images.min()), float(images.max())
    if low < 0:
        raise ValueError(
            f"Negative values in data passed to interlude (min {low:g}): float images must be in "
            "[0, 1] or [0, 255]"
        )
    if scale is None:
        return 1.0 if high <= 1.0 else 255.0
    if high > scale * (1 + 1e-6):
        raise ValueError(
            f"X has values up to {high:g}, but the model was fitted on float images in "
            f"[0, {scale:g}]; pass images on the same scale"
        )
    return scale


def _check_integer_range(images: np.ndarray) -> None:
    low, high = int(images.min()), int(images.max())
    if low < 0:
        raise ValueError(
            f"Negative values in data passed to interlude (min {low}): integer images must be "
            "in 0..255"
        )
    if high > 255:
        raise ValueError(
            f"integer images must be in 0..255, X has values up to {high}; rescale it (e.g. "
            "16-bit images: X // 257) or pass floats in [0, 1]"
        )


# ----------------------------------------------------------------------------- prediction
@torch.no_grad()
def batched_logits(
    model: Model,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Float32 logits ``(N, K)`` of uint8 ``(N, C, H, W)`` images, normalised with mean/std.

    Works for anything that maps a normalised float batch to logits (an ``nn.Module`` in eval
    mode, a TorchScript module or an ONNX session wrapper); the caller sets eval mode.
    """
    from interlude.data.augment import normalize, to_float
    from interlude.train.evaluate import logits_in_batches

    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    logits = logits_in_batches(
        model, images, lambda batch: normalize(to_float(batch), mean_t, std_t), batch_size, device
    )
    return logits.numpy() if len(logits) else np.empty((0, 0), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (rows sum to 1 to within 1e-12)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Predictor:
    """A model plus the preprocessing it was trained with: what ``interlude.load`` returns.

    ``model`` maps normalised float ``(N, C, H, W)`` batches to logits; ``predict`` and
    ``predict_proba`` take uint8/float arrays or image paths and apply the stored preprocessing.
    """

    model: Model
    classes_: np.ndarray
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device = torch.device("cpu")
    batch_size: int = 256
    metadata: dict[str, Any] | None = None

    def images(self, X: Any) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` at the model's resolution, from arrays or files."""
        channels, height, width = self.image_shape
        if is_path_list(X):
            return read_images(list(X), channels, height, width)
        images, _ = to_uint8_images(X)
        if images.shape[1] != channels:
            raise ValueError(
                f"X has {images.shape[1]}-channel images but the model takes {channels} channel(s)"
            )
        return resize_images(images, (height, width))

    def logits(self, X: Any) -> np.ndarray:
        return batched_logits(
            self.model, self.images(X), self.mean, self.std, self.batch_size, self.device
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(N, K)``, columns in the order of ``classes_``."""
        return softmax(self.logits(X))

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.logits(X).argmax(axis=1)]


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """``RUN_DIR/checkpoints/{last,best}.pt`` with an error that says what to do when missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        hint = (
            "best.pt is written only when the run has a validation set (data.val_per_class > 0);"
            " use --checkpoint last" if checkpoint == "best"
            else "has this run been trained (interlude train ...)?"
        )
        raise CheckpointError(f"no checkpoint {path}: {hint}")
    return path


def model_from_checkpoint(state: dict[str, Any], which: str = "ema") -> nn.Module:
    """The network of a weights-only checkpoint dict, in eval mode with embedding fusion off.

    ``which='ema'`` falls back to nothing: a run trained with ``train.ema_decay=0`` has no EMA and
    asking for it is an error, so a user never evaluates another model than the one named.
    """
    from interlude.config import config_from_dict
    from interlude.nets import build_net

    cfg = config_from_dict(state["config"])
    meta = state["meta"]
    channels, height, _ = meta["image_shape"]
    cfg.model.pretrained = None  # the checkpoint holds every weight
    model = build_net(cfg.model, int(meta["num_classes"]), channels, height, cfg.data.name)
    weights = state.get("ema") if which == "ema" else state.get("model")
    if weights is None:
        raise CheckpointError(
            "this checkpoint has no EMA weights (trained with train.ema_decay=0); use --model raw"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint weights do not match the network: {str(exc).splitlines()[0][:200]}"
        ) from None
    model.fusion.strength = 0.0
    model.fusion.at_eval = False
    return model.eval()


def primary_weights(state: dict[str, Any]) -> str:
    """``'ema'`` when the checkpoint has EMA weights (what evaluation reports), else ``'raw'``."""
    return "ema" if state.get("ema") is not None else "raw"


def predictor_from_checkpoint(
    state: dict[str, Any], which: str | None = None, batch_size: int = 256
) -> Predictor:
    meta = state["meta"]
    model = model_from_checkpoint(state, which or primary_weights(state))
    return Predictor(
        model=model,
        classes_=np.array(meta["class_names"]),
        image_shape=tuple(int(v) for v in meta["image_shape"]),  # type: ignore[arg-type]
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        batch_size=batch_size,
    )


# ----------------------------------------------------------------------------- interlude eval
def evaluate_run(run_dir: Path, checkpoint: str = "last", split: str = "test",
                 model: str = "ema") -> dict[str, Any]:
    """Metrics of a run's checkpoint on its test or validation split (``interlude eval``).

    The data is rebuilt from the run's ``config.yaml`` with the labeled split of its
    ``split.json``, so the validation images are exactly those the run held out.
    """
    from interlude.config import load_config
    from interlude.data import build_data
    from interlude.train.checkpoint import load_checkpoint
    from interlude.train.evaluate import classification_metrics

    run_dir = Path(run_dir)
    state = load_checkpoint(checkpoint_path(run_dir, checkpoint))
    if state["config"]["data"]["name"] == ESTIMATOR_DATASET:
        raise DataError(
            f"{run_dir} was trained from arrays with InterLUDEClassifier, so its data cannot be "
            "rebuilt here; score it in Python with clf.score(X, y)"
        )
    data = build_data(_run_config(run_dir, load_config).data)
    images = data.test if split == "test" else data.val
    if images is None or len(images) == 0:
        raise DataError(
            f"{run_dir} has no {split} split"
            + (" (set data.val_per_class > 0 when training)" if split == "val" else "")
        )
    _check_matches(state["meta"], data.image_shape, data.num_classes, run_dir)
    predictor = predictor_from_checkpoint(state, model)
    logits = batched_logits(predictor.model, images.images, predictor.mean, predictor.std)
    metrics = classification_metrics(images.labels, logits.argmax(1), data.num_classes)
    return {"step": int(state["step"]), **metrics}


def _run_config(run_dir: Path, load_config):
    config_file = run_dir / "config.yaml"
    split_file = run_dir / "split.json"
    for path in (config_file, split_file):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: is {run_dir} a run directory?")
    return load_config(config_file, {"data.split_file": str(split_file)})


def _check_matches(meta: dict, image_shape, num_classes: int, run_dir: Path) -> None:
    if list(meta["image_shape"]) != list(image_shape) or meta["num_classes"] != num_classes:
        raise CheckpointError(
            f"the checkpoint of {run_dir} was trained on {meta['num_classes']} classes of "
            f"{tuple(meta['image_shape'])} images, but its config now gives {num_classes} classes "
            f"of {tuple(image_shape)}; has the dataset changed?"
        )


# ----------------------------------------------------------------------------- interlude predict
def predict_files(run_dir: Path, images: Sequence[str], checkpoint: str = "last",
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Class names ``(K,)`` and probabilities ``(N, K)`` of image files, by a run's checkpoint."""
    from interlude.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint_path(Path(run_dir), checkpoint))
    predictor = predictor_from_checkpoint(state, batch_size=batch_size)
    return predictor.classes_, predictor.predict_proba(list(images))


def write_predictions_csv(handle, paths: Sequence[str], classes: np.ndarray,
                          probabilities: np.ndarray) -> None:
    """``path,class,probability`` then one ``p_<class>`` column per class."""
    writer = csv.writer(handle)
    writer.writerow(["path", "class", "probability", *(f"p_{c}" for c in classes)])
    best = probabilities.argmax(axis=1)
    for path, row, k in zip(paths, probabilities, best, strict=True):
        writer.writerow([path, classes[k], f"{row[k]:.6f}", *(f"{p:.6f}" for p in row)])


def predict_cli(args) -> int:
    """``interlude predict RUN_DIR IMAGES... [--out preds.csv]``."""
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be positive, got {args.batch_size}")
    classes, probabilities = predict_files(
        Path(args.run_dir), args.images, args.checkpoint, args.batch_size
    )
    if args.out is None:
        write_predictions_csv(sys.stdout, args.images, classes, probabilities)
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        write_predictions_csv(handle, args.images, classes, probabilities)
    print(f"wrote {len(args.images)} predictions to {out}", file=sys.stderr)
    return 0
