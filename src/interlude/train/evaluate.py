"""Evaluation: top-1, balanced accuracy, macro F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score
from torch import nn


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
def logits_in_batches(model, images: np.ndarray, preprocess, batch_size: int, device) -> torch.Tensor:
    """Logits ``(N, K)`` (float32, on CPU) of uint8 images ``(N, C, H, W)``, ``batch_size`` at a time.

    ``model`` is anything that maps a preprocessed batch to logits (a module already in the mode
    the caller wants, a TorchScript module, an ONNX session wrapper).
    """
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        outputs.append(model(preprocess(batch.to(device))).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


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
    logits = logits_in_batches(model, images, preprocess, batch_size, device)
    model.train(was_training)
    return logits
