"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds and a fairness term.

State (all EMAs with decay ``ema_p``, initialised to 1/K) lives in buffers, so it is checkpointed
and restored on resume:

- ``global_confidence`` tau_t: EMA of the mean max-probability of the weak unlabeled views;
- ``class_confidence`` p~_t: EMA of the mean class-probability vector;
- ``label_histogram`` h_t: EMA of the normalised histogram of weak-view argmax predictions.

Every statistic is updated with the current batch *before* the mask is computed (as in USB). Under
DDP the batch statistics are averaged over ranks first, so the state stays identical everywhere.

The initial state is the same as USB's FreeMatch (``FreeMatchThresholingHook``: ``p_model`` and
``label_hist`` = ones(K)/K, ``time_p`` = p_model.mean() = 1/K) and the authors' InterLUDE+ code
(``p_t``, ``label_hist`` = ones(K)/K, ``tau_t`` = p_t.mean()): tau_0 = 1/K, so early on almost
every unlabeled row passes the threshold and tau rises towards the model's mean confidence. As in
USB's default (``use_quantile=False``, ``clip_thresh=False``), tau tracks the batch *mean* of
max-probabilities, neither a quantile nor clipped.
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


def freematch_update(
    probs_weak: torch.Tensor,
    global_confidence: torch.Tensor,
    class_confidence: torch.Tensor,
    label_histogram: torch.Tensor,
    decay: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EMA step of (tau_t, p~_t, h_t) from the weak-view probabilities ``(N, K)``.

    tau <- d tau + (1-d) mean_n max_k p_nk;  p~ <- d p~ + (1-d) mean_n p_n;
    h <- d h + (1-d) bincount(argmax p_n) / N.
    """
    from interlude.collectives import all_reduce_mean_

    num_classes = probs_weak.shape[1]
    confidence, predicted = probs_weak.max(dim=-1)
    histogram = torch.zeros(num_classes, device=probs_weak.device).scatter_add_(
        0, predicted, torch.ones_like(confidence)
    ) / max(len(predicted), 1)
    batch = all_reduce_mean_(torch.cat([confidence.mean().view(1), probs_weak.mean(0), histogram]))
    new_global = torch.lerp(global_confidence, batch[0], 1.0 - decay)
    new_class = torch.lerp(class_confidence, batch[1 : 1 + num_classes], 1.0 - decay)
    new_hist = torch.lerp(label_histogram, batch[1 + num_classes :], 1.0 - decay)
    return new_global, new_class, new_hist


def self_adaptive_mask(
    probs_weak: torch.Tensor, global_confidence: torch.Tensor, class_confidence: torch.Tensor
) -> torch.Tensor:
    """mask_n = 1[max_k p_nk >= tau_t * p~_t[yhat_n] / max_c p~_t[c]] (as float)."""
    confidence, predicted = probs_weak.max(dim=-1)
    scale = class_confidence / class_confidence.max()
    return (confidence >= global_confidence * scale[predicted]).float()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum().clamp_min(1e-12)


def _safe_reciprocal(x: torch.Tensor) -> torch.Tensor:
    """1/x with 0 where x == 0 (USB's nan_to_num(1/x)), without producing inf in the graph."""
    return torch.where(x > 0, 1.0 / x.clamp_min(1e-12), torch.zeros_like(x))


def fairness_loss(
    logits_strong: torch.Tensor,
    mask: torch.Tensor,
    class_confidence: torch.Tensor,
    label_histogram: torch.Tensor,
) -> torch.Tensor:
    """Self-adaptive fairness term L_SAF = sum_c p'_c log q'_c (same sign as USB), masked rows only.

    p' = normalise(p~_t / h_t) (detached); q' = normalise(mean_{masked} softmax(z_s) / hist_s) with
    hist_s the normalised argmax histogram of the masked strong views. The mask enters as weights,
    not as boolean indexing, so no host sync is needed; an empty mask gives exactly 0 (finite
    value and gradients: every division is guarded), where the authors' code can produce NaN.
    """
    num_classes = logits_strong.shape[1]
    probs = torch.softmax(logits_strong.float(), dim=-1)
    count = mask.sum()
    predicted = probs.detach().argmax(dim=-1)
    hist_s = torch.zeros(num_classes, device=probs.device).scatter_add_(0, predicted, mask)
    hist_s = hist_s / count.clamp_min(1.0)
    mean_prob = (probs * mask[:, None]).sum(0) / count.clamp_min(1.0)
    target = _normalise(class_confidence * _safe_reciprocal(label_histogram)).detach()
    modulated = _normalise(mean_prob * _safe_reciprocal(hist_s).detach())
    loss = (target * torch.log(modulated + 1e-12)).sum()
    return torch.where(count > 0, loss, torch.zeros_like(loss))


class SelfAdaptiveOptions(UnlabeledLossOptions):
    """Options of FreeMatch's self-adaptive thresholds and fairness term (FreeMatch, InterLUDE+)."""

    ema_p: float = Field(0.999, ge=0, lt=1)
    """Decay of the self-adaptive threshold statistics."""
    lambda_ent: float = Field(0.001, ge=0, le=1e4)
    """Weight of the self-adaptive fairness term (0.001 as USB's FreeMatch configs)."""


class FreeMatchOptions(SelfAdaptiveOptions):
    """FreeMatch (USB's defaults)."""


@register_algorithm("freematch", FreeMatchOptions)
class FreeMatch(FixMatch):
    def __init__(self, cfg: SelfAdaptiveOptions, context: AlgorithmContext) -> None:
        super().__init__(cfg, context)
        num_classes = context.num_classes
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("global_confidence", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_confidence", uniform.clone())
        self.register_buffer("label_histogram", uniform.clone())

    @torch.no_grad()
    def update_state(self, probs_weak: torch.Tensor) -> None:
        g, c, h = freematch_update(
            probs_weak, self.global_confidence, self.class_confidence, self.label_histogram,
            self.cfg.ema_p,
        )
        self.global_confidence.copy_(g)
        self.class_confidence.copy_(c)
        self.label_histogram.copy_(h)

    def unlabeled_loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        probs_weak = torch.softmax(logits.uw.detach().float(), dim=-1)
        self.update_state(probs_weak)
        mask = self_adaptive_mask(probs_weak, self.global_confidence, self.class_confidence)
        targets = probs_weak.argmax(dim=-1)
        loss_sat = masked_cross_entropy(logits.us, targets, mask)
        loss_fair = fairness_loss(logits.us, mask, self.class_confidence, self.label_histogram)
        total = self.cfg.lambda_u * loss_sat + self.cfg.lambda_ent * loss_fair
        return total, {
            "loss_unsup": loss_sat.detach(),
            "loss_fair": loss_fair.detach(),
            **pseudo_label_metrics(mask, targets, self.num_classes),
            "threshold": self.global_confidence.clone(),
        }


__all__ = ["FreeMatch", "FreeMatchOptions", "SelfAdaptiveOptions", "fairness_loss",
           "freematch_update", "self_adaptive_mask"]
