"""Using a trained model: batched prediction, ``interlude eval`` and ``interlude predict``.

Input conversion (arrays, image files) is :mod:`interlude.inputs`; the model comes from a
checkpoint through :class:`interlude.artifact.Checkpoint`, the one path from saved files to a
network.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interlude.artifact import Checkpoint
from interlude.data.base import SSLData
from interlude.data.rows import ImageRows
from interlude.errors import DataError, shown
from interlude.files import csv_text, text_cell, write_atomic
from interlude.inputs import image_files, images_for_model, read_images_skipping
from interlude.rundir import RunDir

Model = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- prediction
@torch.no_grad()
def batched_logits(
    model: Model,
    images: np.ndarray | ImageRows,
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
    interpolation: str = "bilinear"
    """The resize filter training used (``data.interpolation``), applied to new images."""

    def images(self, X: Any) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` at the model's resolution, from arrays or files."""
        return images_for_model(X, self.image_shape, self.interpolation)

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
def predictor_from_checkpoint(
    checkpoint: Checkpoint, which: str | None = None, batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Predictor:
    model = checkpoint.build_model(which).to(device)
    meta = checkpoint.meta
    return Predictor(
        model=model, classes_=np.array(meta.class_names), image_shape=meta.image_shape,
        mean=meta.mean, std=meta.std, device=torch.device(device), batch_size=batch_size,
        interpolation=meta.interpolation,
    )


# ----------------------------------------------------------------------------- a run's data
def rebuild_run_data(run: RunDir, state: Checkpoint, arrays_hint: str) -> SSLData:
    """The data a run trained on, rebuilt from its checkpoint's config and its ``split.json``
    (so labeled, unlabeled and validation rows are exactly the run's), checked against the
    checkpoint. ``arrays_hint`` says what to do instead for a run trained from arrays."""
    from interlude.data import build_data
    from interlude.data.arrays import ESTIMATOR_DATASET

    if state.config.data.name == ESTIMATOR_DATASET:
        raise DataError(f"{run.path} was trained from arrays with InterLUDEClassifier, so its "
                        f"data cannot be rebuilt here; {arrays_hint}")
    if not run.split.is_file():
        raise DataError(f"{run.split} is missing: is {run.path} a run directory?")
    data_cfg = copy.deepcopy(state.config.data)
    data_cfg.split_file = str(run.split)
    data = build_data(data_cfg)
    if (state.meta.image_shape, state.meta.num_classes) != (data.image_shape, data.num_classes):
        raise DataError(
            f"the checkpoint of {run.path} was trained on {state.meta.num_classes} classes of "
            f"{state.meta.image_shape} images, but its data now gives {data.num_classes} classes "
            f"of {data.image_shape}; has the dataset changed?"
        )
    return data


# ----------------------------------------------------------------------------- interlude eval
def evaluate_run(run_dir: Path, checkpoint: str = "last", split: str = "test",
                 model: str = "ema") -> dict[str, Any]:
    """Metrics of a run's checkpoint on its test or validation split (``interlude eval``).

    The data is rebuilt from the checkpoint's config with the labeled split of the run's
    ``split.json`` (validated as any split file), so the validation images are exactly those the
    run held out.
    """
    from interlude.train.evaluate import classification_metrics

    run = RunDir(run_dir)
    state = Checkpoint.load(run.checkpoint(checkpoint))
    data = rebuild_run_data(run, state, "score it in Python with clf.score(X, y)")
    images = data.test if split == "test" else data.val
    if images is None or len(images) == 0:
        raise DataError(
            f"{run.path} has no {split} split"
            + (" (set data.val_per_class > 0 when training)" if split == "val" else "")
        )
    predictor = predictor_from_checkpoint(state, model)
    # the rebuilt images are at the model's resolution already: read by batches, never whole
    logits = batched_logits(predictor.model, images.images, predictor.mean, predictor.std,
                            predictor.batch_size, predictor.device)
    metrics = classification_metrics(images.labels, logits.argmax(1), data.num_classes)
    return {"step": state.step, **metrics}


# ----------------------------------------------------------------------------- interlude predict
@dataclass
class FilePredictions:
    """Predictions for image files; ``errors[i]`` says why file ``i`` could not be read."""

    paths: list[Path]
    classes: np.ndarray
    probabilities: np.ndarray
    """``(N, K)``; rows of unreadable files are NaN."""
    errors: list[str | None]


def predict_files(run_dir: Path, images: Sequence[str | Path], checkpoint: str = "last",
                  batch_size: int = 256) -> FilePredictions:
    """Predict image files and folders (searched recursively) with a run's checkpoint.

    Unreadable files are skipped with a warning and get a row of NaN and their error.
    """
    state = Checkpoint.load(RunDir(run_dir).checkpoint(checkpoint))
    predictor = predictor_from_checkpoint(state, batch_size=batch_size)
    paths = image_files(images)
    decoded, errors = read_images_skipping(paths, *predictor.image_shape,
                                            predictor.interpolation)
    probabilities = np.full((len(paths), len(predictor.classes_)), np.nan)
    readable = [i for i, error in enumerate(errors) if error is None]
    if readable:
        probabilities[readable] = softmax(batched_logits(
            predictor.model, decoded, predictor.mean, predictor.std, batch_size,
            predictor.device))
    return FilePredictions(paths, predictor.classes_, probabilities, errors)


def predictions_csv(predictions: FilePredictions) -> str:
    """``path,class,probability``, one ``p_<class>`` column per class, and ``error``, as CSV
    text written by :func:`interlude.files.csv_text` (names escaped, formulas neutralised).

    A file that could not be read keeps its row, with empty predictions and the reason.
    """
    classes = predictions.classes
    header = ["path", "class", "probability", *(f"p_{c}" for c in classes), "error"]
    rows = []
    for path, row, error in zip(predictions.paths, predictions.probabilities, predictions.errors,
                                strict=True):
        if error is not None:
            rows.append([path, "", "", *([""] * len(classes)), error])
            continue
        k = int(row.argmax())
        rows.append([path, classes[k], f"{row[k]:.6f}", *(f"{p:.6f}" for p in row), ""])
    return csv_text(header, rows)


PREDICTIONS_HEADER = "path,class,probability,"


def check_predictions_target(out: Path, run_dir: Path, inputs: Sequence[str | Path]) -> None:
    """Refuse a ``--out`` that would replace something the user keeps: a file of the run being
    read, one of the images being predicted, or any existing file that is not a predictions CSV
    written before (an earlier ``--out`` to the same file is replaced, as users expect)."""
    target = out.resolve()
    if target.is_relative_to(run_dir.resolve()):
        raise DataError(f"--out {shown(str(out))} is inside the run folder {shown(str(run_dir))}; write the "
                        "predictions elsewhere")
    if any(Path(path).resolve() == target for path in inputs):
        raise DataError(f"--out {shown(str(out))} is one of the images to predict; choose another file")
    if target.is_file():
        with open(target, "rb") as handle:
            head = handle.read(len(PREDICTIONS_HEADER)).decode("utf-8", "replace")
        if head != PREDICTIONS_HEADER:
            raise DataError(f"--out {shown(str(out))} exists and is not a predictions CSV; choose "
                            "another file or remove it first")


def predict_cli(args) -> int:
    """``interlude predict RUN_DIR IMAGES_OR_FOLDERS... [--out preds.csv | --out FOLDER]``."""
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be positive, got {args.batch_size}")
    predictions = predict_files(Path(args.run_dir), args.images, args.checkpoint, args.batch_size)
    skipped = sum(e is not None for e in predictions.errors)
    text = predictions_csv(predictions)
    if args.out is None:
        _write_stdout(text)
    else:
        out = Path(args.out)
        if out.is_dir() or args.out.endswith(("/", "\\")):
            out = out / "predictions.csv"
        check_predictions_target(out, Path(args.run_dir), predictions.paths)
        write_atomic(out, text.encode("utf-8"))  # all rows or the previous file, never 5 of 26
        print(f"wrote {len(predictions.paths)} predictions to {text_cell(out)}", file=sys.stderr)
    if skipped == len(predictions.paths):  # the rows are written, but nothing was predicted
        raise DataError(f"none of the {skipped} image file(s) could be read (the CSV rows say "
                        "why); check the paths and formats")
    if skipped:
        print(f"warning: {skipped} file(s) could not be read; their rows say why",
              file=sys.stderr)
    return 0


def _write_stdout(text: str) -> None:
    """UTF-8 bytes, as the file would hold, whatever the terminal's encoding."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a replaced stdout (tests, notebooks) takes text
        sys.stdout.write(text)
    else:
        buffer.write(text.encode("utf-8"))
        buffer.flush()
