"""Supervised baseline: cross-entropy on the weak view of the labeled images only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interlude.algorithms.base import Algorithm, Metrics, ViewLogits


def supervised_loss(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy ``-(1/B) sum_i w_{y_i} log softmax(z_i)[y_i]``.

    With class weights this is the weighted *sum* divided by B (not by the sum of weights), the
    convention of the authors' TMED code, so the weights scale the loss rather than re-normalise it.
    """
    per_item = F.cross_entropy(logits.float(), labels, reduction="none")
    if class_weights is not None:
        per_item = per_item * class_weights[labels]
    return per_item.mean()


class Supervised(Algorithm):
    name = "supervised"
    views = ("lw",)

    def loss(self, logits: ViewLogits, labels: torch.Tensor, step: int) -> tuple[torch.Tensor, Metrics]:
        loss = supervised_loss(logits.lw, labels, self.supervised_weights)
        return loss, {"loss": loss.detach(), "loss_sup": loss.detach()}
