"""Evaluation: top-1, balanced accuracy, macro F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score
from torch import nn

from interlude.data.base import ImageSet


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
def predict_logits(
    model: nn.Module,
    images: np.ndarray,
    preprocess,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Logits ``(N, K)`` (on CPU) of uint8 images ``(N, C, H, W)`` in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        outputs.append(model(preprocess(batch.to(device))).float().cpu())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def evaluate_model(
    model: nn.Module,
    images: ImageSet,
    preprocess,
    num_classes: int,
    batch_size: int,
    device: torch.device,
) -> dict[str, object]:
    logits = predict_logits(model, images.images, preprocess, batch_size, device)
    predictions = logits.argmax(-1).numpy()
    return classification_metrics(images.labels, predictions, num_classes)
