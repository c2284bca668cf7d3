"""Evaluation: top-1, balanced accuracy, macro F1 and the confusion matrix, sharded under DDP."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score
from torch import nn

from interlude.data.base import ImageSet
from interlude.data.rows import ImageRows, as_rows
from interlude.train.distributed import DistContext, shard_range


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> dict[str, object]:
    """Top-1, balanced accuracy (mean per-class recall), macro F1 and confusion matrix."""
    classes = list(range(num_classes))
    present = np.unique(labels)
    return {
        "top1": float((labels == predictions).mean()),
        "balanced_acc": float(balanced_accuracy_score(labels, predictions)),
        "macro_f1": float(
            f1_score(labels, predictions, labels=present, average="macro", zero_division=0)
        ),
        "confusion": confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


@torch.no_grad()
def logits_in_batches(model, images: np.ndarray | ImageRows, preprocess, batch_size: int,
                      device) -> torch.Tensor:
    """Logits ``(N, K)`` (float32, on CPU) of uint8 images ``(N, C, H, W)``, ``batch_size`` at a time.

    ``model`` is anything that maps a preprocessed batch to logits (a module already in the mode
    the caller wants, a TorchScript module, an ONNX session wrapper).
    """
    outputs = []
    for rows in as_rows(images).chunks(batch_size):  # a disk-backed set: batch by batch
        batch = torch.from_numpy(np.ascontiguousarray(rows))
        outputs.append(model(preprocess(batch.to(device))).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def predict_logits(
    model: nn.Module,
    images: np.ndarray | ImageRows,
    preprocess,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Logits ``(N, K)`` (on CPU) of uint8 images ``(N, C, H, W)`` in eval mode."""
    was_training = model.training
    model.eval()
    logits = logits_in_batches(model, images, preprocess, batch_size, device)
    model.train(was_training)
    return logits


def evaluate_model(
    model: nn.Module,
    images: ImageSet,
    preprocess,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``images``; under DDP each rank scores one shard, gathered.

    Shards are made of whole eval batches, so every batch is the one a single process would
    form (this matters with ``fusion_at_eval``, where a prediction depends on its batch).
    """
    dist = dist or DistContext()
    start, stop = shard_range(len(images), batch_size, dist.rank, dist.world_size)
    predictions = np.empty(0, dtype=np.int64)
    if stop > start:
        rows = images.images.window(start, stop)
        logits = predict_logits(model, rows, preprocess, batch_size, device)
        predictions = logits.argmax(-1).numpy().astype(np.int64)
    gathered = dist.all_gather_object(predictions)
    return classification_metrics(images.labels, np.concatenate(gathered), num_classes)
