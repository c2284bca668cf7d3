"""Supervised baseline: cross-entropy on the weak view of the labeled images only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interlude.algorithms.base import (
    Algorithm,
    AlgorithmOptions,
    Batch,
    Metrics,
    ViewLogits,
    register_algorithm,
)


def supervised_loss(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy ``-(1/B) sum_i log softmax(z_i)[y_i]``; with class weights the weighted mean
    ``sum_i w_{y_i} ce_i / sum_i w_{y_i}``.

    The weighted form is PyTorch's ``F.cross_entropy(..., weight=w)`` (reduction 'mean'), which
    the authors' TMED code uses: the weights re-balance classes within the batch without changing
    the overall scale of the loss (uniform weights give the plain mean, whatever their value).
    """
    per_item = F.cross_entropy(logits.float(), labels, reduction="none")
    if class_weights is None:
        return per_item.mean()
    w = class_weights.to(per_item)[labels]
    return (w * per_item).sum() / w.sum()


class SupervisedOptions(AlgorithmOptions):
    """The supervised baseline has no options of its own."""


@register_algorithm("supervised", SupervisedOptions)
class Supervised(Algorithm):
    views = ("lw",)

    def loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        loss = supervised_loss(logits.lw, batch.labels, self.supervised_weights)
        return loss, {"loss": loss.detach(), "loss_sup": loss.detach()}
