"""SoftMatch (Chen et al., ICLR 2023): FixMatch with soft, truncated-Gaussian pseudo-label weights.

Instead of a hard confidence threshold, every weak-view pseudo-label gets the weight

    w_n = 1                                                   if p_n >= mu_t
    w_n = exp(-(p_n - mu_t)^2 / (2 var_t / n_sigma^2))        otherwise

where p_n is the row's max probability after uniform distribution alignment and (mu_t, var_t) are
EMAs (momentum ``ema_p``) of the batch mean and unbiased variance of those max probabilities. So
confident rows count fully and less confident ones fade out smoothly, without a tuned threshold.

Reference: USB (``semilearn`` 0.3.2, microsoft/Semi-supervised-learning). Matched, in this order:

1. ``softmatch/softmatch.py`` ``train_step`` (lines 81-106): supervised CE; probabilities of the
   *detached* labeled and weak unlabeled logits (no temperature);
2. ``hooks/dist_align.py`` ``DistAlignEMAHook`` (lines 25-55): first update ``p_model`` with the
   (global) batch mean of the raw weak probabilities (``p_model`` starts unset: the first batch
   mean is taken as is, no EMA), and ``p_target`` with the labeled mean when it is not uniform;
   then align ``q * (p_target + 1e-6) / (p_model + 1e-6)``, renormalised per row;
3. ``softmatch/utils.py`` ``SoftMatchWeightingHook`` (lines 23-26, 31-40, 53-77): mu_0 = 1/K,
   var_0 = 1; first update (mu, var) with the mean and *unbiased* variance of the (global) aligned
   max probabilities, then weight the rows with the *updated* statistics via
   ``clamp(p - mu, max=0)`` (the truncation, no branch);
4. ``hooks/pseudo_label.py`` (lines 37-42): hard pseudo-labels are the argmax of the *raw* weak
   logits, not of the aligned probabilities (USB's comment in ``train_step`` insists on it);
5. ``core/criterions/consistency.py``: ``(CE(z_s, yhat, reduction='none') * w).mean()`` over all
   rows; total = sup + lambda_u * unsup.

Under DDP the batch statistics are those of the global batch, as USB's ``concat_all_gather``: the
per-rank probability means are averaged (equal per-rank batches) and the max probabilities are
gathered before their variance is taken, so the state stays identical on every rank.

Deliberate differences (none on USB's default path, ``dist_align=dist_uniform=True``, batches of
more than one unlabeled row, var_t > 0):

- ``dist_align=False`` skips the alignment; USB accepts the flag but never reads it (always aligns).
- a global unlabeled batch of one row uses variance 0 (USB: NaN from the unbiased variance), and
  the Gaussian's denominator is floored at 1e-12 (USB: NaN when var_t is exactly 0 and p = mu_t).
- USB's ``per_class`` variant (per-class mu/var, default off) and soft pseudo-labels
  (``hard_label=False``, which alone uses USB's ``T``) are not implemented, so there is no
  temperature option: the hard label is the argmax, which no temperature changes.
"""

from __future__ import annotations

import torch
from pydantic import Field

from interlude.algorithms.base import (
    AlgorithmContext,
    Batch,
    Metrics,
    UnlabeledLossOptions,
    ViewLogits,
    pseudo_label_metrics,
    register_algorithm,
)
from interlude.algorithms.fixmatch import FixMatch, masked_cross_entropy

__all__ = [
    "SoftMatch",
    "SoftMatchOptions",
    "align_distribution",
    "confidence_stats",
    "distribution_alignment",
    "softmatch_weights",
    "update_confidence_stats",
    "update_distribution",
]

ALIGN_EPS = 1e-6
"""Added to p_target and p_model before dividing (USB's constant)."""
VAR_FLOOR = 1e-12
"""Smallest Gaussian denominator 2 var / n_sigma^2: keeps the weight finite when var_t is 0."""


class SoftMatchOptions(UnlabeledLossOptions):
    """SoftMatch (USB's defaults): no confidence threshold, a truncated Gaussian instead."""

    ema_p: float = Field(0.999, ge=0, lt=1)
    """Momentum of the EMAs of the confidence mean and variance and of the prediction
    distribution (SoftMatch's m)."""
    n_sigma: float = Field(2.0, gt=0, le=1e4)
    """Width of SoftMatch's truncated Gaussian, in standard deviations of the confidence."""
    dist_align: bool = True
    """SoftMatch: align the weak-view probabilities to the target distribution before weighting."""
    dist_uniform: bool = True
    """SoftMatch: target distribution uniform (true) or an EMA of the labeled predictions (false)."""


def update_distribution(
    p_model: torch.Tensor, batch_mean: torch.Tensor, momentum: float, initialised: torch.Tensor
) -> torch.Tensor:
    """p_model <- m p_model + (1-m) batch_mean, or batch_mean itself on the first step (USB's
    ``p_model is None``); ``initialised`` is a bool tensor, so no host sync."""
    ema = p_model * momentum + batch_mean * (1.0 - momentum)
    return torch.where(initialised, ema, batch_mean)


def distribution_alignment(
    probs: torch.Tensor, p_model: torch.Tensor, p_target: torch.Tensor
) -> torch.Tensor:
    """q~ = normalise(q * (p_target + eps) / (p_model + eps)) row by row."""
    aligned = probs * (p_target + ALIGN_EPS) / (p_model + ALIGN_EPS)
    return aligned / aligned.sum(dim=-1, keepdim=True)


def align_distribution(
    probs: torch.Tensor,
    p_model: torch.Tensor,
    p_target: torch.Tensor,
    batch_mean: torch.Tensor,
    momentum: float,
    initialised: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """USB's order: update p_model with the batch mean first, then align with the new p_model.

    Returns (aligned probabilities, new p_model). ``batch_mean`` is the mean of ``probs`` over the
    global batch (the caller reduces it across ranks).
    """
    new_model = update_distribution(p_model, batch_mean, momentum, initialised)
    return distribution_alignment(probs, new_model, p_target), new_model


def confidence_stats(max_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and unbiased variance of the max probabilities (variance 0 for one row)."""
    correction = 1 if max_probs.numel() > 1 else 0
    return max_probs.mean(), torch.var(max_probs, correction=correction)


def update_confidence_stats(
    max_probs: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """mu <- m mu + (1-m) mean(p); var <- m var + (1-m) var_unbiased(p), over the global batch."""
    batch_mu, batch_var = confidence_stats(max_probs)
    return momentum * mu + (1.0 - momentum) * batch_mu, momentum * var + (1.0 - momentum) * batch_var


def softmatch_weights(
    max_probs: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, n_sigma: float
) -> torch.Tensor:
    """Truncated Gaussian: 1 at or above mu, exp(-(p - mu)^2 / (2 var / n_sigma^2)) below."""
    below = torch.clamp(max_probs - mu, max=0.0)
    return torch.exp(-(below**2) / (2.0 * var / n_sigma**2).clamp_min(VAR_FLOOR))


@register_algorithm("softmatch", SoftMatchOptions)
class SoftMatch(FixMatch):
    """State in buffers (checkpointed, moved with ``.to``): ``prob_max_mu`` (mu_t, starts 1/K),
    ``prob_max_var`` (var_t, starts 1), ``p_model`` (with ``p_model_initialised``: unset until the
    first step) and ``p_target`` (uniform; an EMA of labeled predictions if not ``dist_uniform``)."""

    def __init__(self, cfg: SoftMatchOptions, context: AlgorithmContext) -> None:
        super().__init__(cfg, context)
        num_classes = context.num_classes
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("prob_max_mu", torch.tensor(1.0 / num_classes))
        self.register_buffer("prob_max_var", torch.tensor(1.0))
        self.register_buffer("p_model", uniform.clone())
        self.register_buffer("p_model_initialised", torch.tensor(False))
        self.register_buffer("p_target", uniform.clone())

    @torch.no_grad()
    def align(self, probs_weak: torch.Tensor, probs_labeled: torch.Tensor) -> torch.Tensor:
        """Update p_model (and p_target) with the global batch, then align ``probs_weak``."""
        from interlude.collectives import all_reduce_mean_

        momentum = self.cfg.ema_p
        uniform = self.cfg.dist_uniform
        num_classes = self.num_classes
        parts = [probs_weak.mean(0)] + ([] if uniform else [probs_labeled.mean(0)])
        means = all_reduce_mean_(torch.cat(parts))
        if not uniform:  # USB's p_target_type='model': EMA of the labeled predictions from uniform
            self.p_target.copy_(
                self.p_target * momentum + means[num_classes:] * (1.0 - momentum)
            )
        aligned, p_model = align_distribution(
            probs_weak, self.p_model, self.p_target, means[:num_classes], momentum,
            self.p_model_initialised,
        )
        self.p_model.copy_(p_model)
        self.p_model_initialised.fill_(True)
        return aligned

    @torch.no_grad()
    def weights(self, probs: torch.Tensor) -> torch.Tensor:
        """Update (mu_t, var_t) with the global batch's max probabilities, then weight the rows."""
        from interlude.collectives import all_gather_cat

        max_probs = probs.max(dim=-1).values
        mu, var = update_confidence_stats(
            all_gather_cat(max_probs), self.prob_max_mu, self.prob_max_var,
            self.cfg.ema_p,
        )
        self.prob_max_mu.copy_(mu)
        self.prob_max_var.copy_(var)
        return softmatch_weights(max_probs, mu, var, self.cfg.n_sigma)

    def unlabeled_loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        probs_weak = torch.softmax(logits.uw.detach().float(), dim=-1)
        if self.cfg.dist_align:
            probs_labeled = torch.softmax(logits.lw.detach().float(), dim=-1)
            probs_weak = self.align(probs_weak, probs_labeled)
        mask = self.weights(probs_weak)
        targets = logits.uw.detach().argmax(dim=-1)  # raw logits, as USB (not the aligned probs)
        loss = masked_cross_entropy(logits.us, targets, mask)
        return self.cfg.lambda_u * loss, {
            "loss_unsup": loss.detach(),
            **pseudo_label_metrics(mask, targets, self.num_classes),
            "threshold": self.prob_max_mu.clone(),
            "confidence_var": self.prob_max_var.clone(),
        }
