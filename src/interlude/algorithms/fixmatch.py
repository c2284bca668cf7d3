"""FixMatch (Sohn et al., 2020): confident weak-view pseudo-labels train the strong view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from interlude.algorithms.base import (
    Algorithm,
    Batch,
    Metrics,
    PseudoLabelOptions,
    ViewLogits,
    pseudo_label_metrics,
    register_algorithm,
)
from interlude.algorithms.supervised import supervised_loss


def pseudo_label(
    logits_weak: torch.Tensor, threshold: float, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels from the weak view, with gradients stopped.

    q = softmax(z_w / T); targets = argmax q; mask = 1[max q >= threshold].
    Returns (targets, mask as float, q).
    """
    probs = torch.softmax(logits_weak.detach().float() / temperature, dim=-1)
    confidence, targets = probs.max(dim=-1)
    return targets, (confidence >= threshold).float(), probs


def masked_cross_entropy(
    logits_strong: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``(1/N) sum_n mask_n * CE(z_s_n, target_n)``: the mean over *all* N rows, masked or not."""
    return (F.cross_entropy(logits_strong.float(), targets, reduction="none") * mask).mean()


def fixmatch_unlabeled_loss(
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    threshold: float,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's unlabeled loss; returns (loss, mask, targets)."""
    targets, mask, _ = pseudo_label(logits_weak, threshold, temperature)
    return masked_cross_entropy(logits_strong, targets, mask), mask, targets


class FixMatchOptions(PseudoLabelOptions):
    """FixMatch: a fixed confidence threshold on the weak view's pseudo-labels."""


@register_algorithm("fixmatch", FixMatchOptions)
class FixMatch(Algorithm):
    views = ("lw", "uw", "us")

    def unlabeled_loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        """The weighted unlabeled term(s) and their metrics; FreeMatch/FlexMatch override this."""
        loss, mask, targets = fixmatch_unlabeled_loss(
            logits.uw, logits.us, self.cfg.threshold, self.cfg.temperature
        )
        return self.cfg.lambda_u * loss, {
            "loss_unsup": loss.detach(), **pseudo_label_metrics(mask, targets, self.num_classes)
        }

    def loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        loss_sup = supervised_loss(logits.lw, batch.labels, self.supervised_weights)
        unlabeled, metrics = self.unlabeled_loss(logits, batch, step)
        loss = loss_sup + unlabeled
        return loss, {"loss": loss.detach(), "loss_sup": loss_sup.detach(), **metrics}
