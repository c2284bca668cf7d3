"""FlexMatch (Zhang et al., NeurIPS 2021): curriculum pseudo-labelling with class-wise thresholds.

Each unlabeled image remembers the last class it was confidently (p >= tau) predicted as
(``selected_label``, -1 = never). A class's learning effect sigma_c is how many images are
currently assigned to it; normalised, beta_c = sigma_c / max(max_c sigma_c, #unused) with the
threshold warm-up (or / max_c sigma_c without), and the class threshold is tau * M(beta_c) with the
convex mapping M(x) = x / (2 - x). Everything is tensor arithmetic (no host sync); the state is a
buffer, so it is checkpointed. Under DDP every rank applies the updates of all ranks.
"""

from __future__ import annotations

import torch

from interlude.algorithms.base import (
    AlgorithmContext,
    Batch,
    Metrics,
    PseudoLabelOptions,
    ViewLogits,
    pseudo_label_metrics,
    register_algorithm,
)
from interlude.algorithms.fixmatch import FixMatch, masked_cross_entropy

__all__ = ["FlexMatch", "class_learning_effect", "flexible_thresholds", "remember_confident"]


def class_learning_effect(
    selected_label: torch.Tensor, num_classes: int, warmup: bool
) -> torch.Tensor:
    """beta_c from the per-image assignments (-1 = unused); all zeros while nothing is assigned.

    Counted with ``scatter_add_`` into a buffer of fixed size: ``torch.bincount`` on a CUDA tensor
    reads the input's min and max back to the host to size its output (two waits every step).
    """
    counts = torch.zeros(num_classes + 1, dtype=torch.float32, device=selected_label.device)
    counts.scatter_add_(0, selected_label + 1, torch.ones_like(selected_label, dtype=counts.dtype))
    per_class = counts[1:]
    denominator = counts.max() if warmup else per_class.max()
    beta = per_class / denominator.clamp_min(1.0)
    nothing_assigned = counts[0] >= len(selected_label)
    return torch.where(nothing_assigned, torch.zeros_like(beta), beta)


def flexible_thresholds(beta: torch.Tensor, threshold: float) -> torch.Tensor:
    """tau_c = tau * M(beta_c), M(x) = x / (2 - x)."""
    return threshold * beta / (2.0 - beta)


class FlexMatchOptions(PseudoLabelOptions):
    """FlexMatch: per-class thresholds scaled by how well each class is learned."""

    flex_warmup: bool = True
    """Threshold warm-up (count unused samples as a class)."""


@register_algorithm("flexmatch", FlexMatchOptions)
class FlexMatch(FixMatch):
    def __init__(self, cfg: FlexMatchOptions, context: AlgorithmContext) -> None:
        super().__init__(cfg, context)
        size = max(context.num_unlabeled, 1)
        self.register_buffer("selected_label", torch.full((size,), -1))

    def unlabeled_loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        if batch.unlabeled_indices is None:
            raise ValueError("FlexMatch needs the step's unlabeled indices (Batch.unlabeled_indices)")
        probs = torch.softmax(logits.uw.detach().float() / self.cfg.temperature, dim=-1)
        confidence, predicted = probs.max(dim=-1)
        beta = class_learning_effect(self.selected_label, self.num_classes, self.cfg.flex_warmup)
        class_threshold = flexible_thresholds(beta, self.cfg.threshold)
        mask = (confidence >= class_threshold[predicted]).float()
        self._remember_confident(batch.unlabeled_indices, predicted, confidence)
        loss = masked_cross_entropy(logits.us, predicted, mask)
        return self.cfg.lambda_u * loss, {
            "loss_unsup": loss.detach(),
            **pseudo_label_metrics(mask, predicted, self.num_classes),
            "threshold": class_threshold.mean(),
        }

    @torch.no_grad()
    def _remember_confident(
        self, indices: torch.Tensor, predicted: torch.Tensor, confidence: torch.Tensor
    ) -> None:
        """selected_label[i] = prediction for images predicted with p >= tau (sync-free).

        Under DDP the updates of every rank are gathered and applied on every rank, so the memory
        (and hence the thresholds) stays identical across ranks.
        """
        from interlude.collectives import all_gather_cat

        indices = all_gather_cat(indices)
        predicted = all_gather_cat(predicted)
        confident = all_gather_cat(confidence) >= self.cfg.threshold
        self.selected_label.copy_(
            remember_confident(self.selected_label, indices, predicted, confident)
        )


def remember_confident(
    selected_label: torch.Tensor,
    indices: torch.Tensor,
    predicted: torch.Tensor,
    confident: torch.Tensor,
) -> torch.Tensor:
    """The memory after one step: ``selected_label[i] = predicted`` where ``confident``.

    The same image can appear several times in a step (the unlabeled draws of different labeled
    items are independent). A plain ``index_put_`` then lets an unconfident copy overwrite a
    confident one, and which duplicate wins is unspecified on CUDA (so DDP ranks could disagree).
    Here a confident prediction always beats no update, and among confident duplicates with
    different predictions the highest class index wins: deterministic on every device.
    """
    code = torch.where(confident, predicted + 1, torch.zeros_like(predicted))  # 0 = no update
    winner = torch.zeros_like(selected_label).scatter_reduce_(
        0, indices, code, reduce="amax", include_self=True
    )
    return torch.where(winner > 0, winner - 1, selected_label)
