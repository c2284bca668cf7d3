"""InterLUDE (Huang et al., ICML 2024): FixMatch + embedding fusion + delta-consistency loss.

The fusion itself lives in the network (:mod:`interlude.nets.fusion`) and the pairing in the
batch layout (:mod:`interlude.data.layout`); this module adds the delta-consistency (DC) loss.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from interlude.algorithms.base import (
    AlgorithmOptions,
    Batch,
    Metrics,
    PseudoLabelOptions,
    ViewLogits,
    register_algorithm,
)
from interlude.algorithms.fixmatch import FixMatch


def labeled_delta(logits_lw: torch.Tensor, logits_ls: torch.Tensor) -> torch.Tensor:
    """Delta^L_i = softmax(z(x_i^w)) - softmax(z(x_i^s)), fully detached (a fixed target)."""
    return (torch.softmax(logits_lw.detach().float(), -1)
            - torch.softmax(logits_ls.detach().float(), -1))


def unlabeled_deltas(logits_uw: torch.Tensor, logits_us: torch.Tensor, mu: int) -> torch.Tensor:
    """Per-pair deltas p(u_ij^w) - p(u_ij^s) as ``(B, mu, K)``; gradients reach both views."""
    delta = torch.softmax(logits_uw.float(), -1) - torch.softmax(logits_us.float(), -1)
    return delta.reshape(-1, mu, delta.shape[-1])


def dc_loss_avg(
    logits_lw: torch.Tensor,
    logits_ls: torch.Tensor,
    logits_uw: torch.Tensor,
    logits_us: torch.Tensor,
    mu: int,
) -> torch.Tensor:
    """DC loss, variant ``avg``.

    L_DC = (1/(B K)) sum_i sum_k (Delta^U_ik - Delta^L_ik)^2 with
    Delta^U_i = (1/mu) sum_j [p(u_ij^w) - p(u_ij^s)].
    """
    target = labeled_delta(logits_lw, logits_ls)
    delta_u = unlabeled_deltas(logits_uw, logits_us, mu).mean(dim=1)
    return ((delta_u - target) ** 2).mean()


def dc_loss_class_dependent(
    logits_lw: torch.Tensor,
    logits_ls: torch.Tensor,
    logits_uw: torch.Tensor,
    logits_us: torch.Tensor,
    labels: torch.Tensor,
    mu: int,
    authors_scaling: bool = False,
) -> torch.Tensor:
    """DC loss, variant ``cd``: only paired unlabeled whose weak pseudo-label equals y_i count.

    m_ij = 1[argmax p(u_ij^w) == y_i] (no confidence threshold), n_i = sum_j m_ij,
    Delta^U_i = sum_j m_ij [p(u_ij^w) - p(u_ij^s)] / n_i, r_i = 1[n_i > 0].

    Ours (default) masks per row: L = (1/(B K)) sum_i r_i sum_k (Delta^U_ik - Delta^L_ik)^2, so a
    row without any match adds nothing. ``authors_scaling=True`` reproduces the authors' code:
    the full MSE over all rows (unmatched rows use Delta^U = 0) times mean_i r_i.
    """
    target = labeled_delta(logits_lw, logits_ls)
    deltas = unlabeled_deltas(logits_uw, logits_us, mu)
    pseudo = logits_uw.detach().reshape(-1, mu, logits_uw.shape[-1]).argmax(-1)
    match = (pseudo == labels[:, None]).float()
    count = match.sum(dim=1)
    delta_u = (deltas * match[..., None]).sum(dim=1) / (count[:, None] + 1e-8)
    matched_rows = (count > 0).float()
    squared = (delta_u - target) ** 2
    if authors_scaling:
        return squared.mean() * matched_rows.mean()
    return (squared * matched_rows[:, None]).mean()


class DeltaConsistencyOptions(AlgorithmOptions):
    """InterLUDE's options, shared by every algorithm with the DeltaConsistency mixin."""

    lambda_dc: float = Field(1.0, ge=0, le=1e4)
    """Weight of the delta-consistency loss (0 = off)."""
    dc_variant: Literal["avg", "cd", "cd_authors"] = "avg"
    """DC loss: `avg` over all paired unlabeled; `cd` only over those whose pseudo-label equals the
    label (per-row mask); `cd_authors` reproduces the authors' scalar-scaled cd."""
    fusion_strength: float = Field(0.1, ge=0, lt=1)
    """Embedding fusion alpha (0 = off)."""
    fusion_at_eval: bool = False
    """Reproduce the authors' code, which also fuses at evaluation (predictions then depend on
    batch)."""


class DeltaConsistency:
    """Mixin adding InterLUDE's parts to a pseudo-label algorithm: all four views forwarded,
    embedding fusion on, and ``lambda_dc * L_DC`` added to the base loss.

    InterLUDE is ``DeltaConsistency + FixMatch``; InterLUDE+ is ``DeltaConsistency + FreeMatch``.
    """

    views = ("lw", "uw", "ls", "us")
    uses_fusion = True

    @property
    def fusion_strength(self) -> float:
        return self.cfg.fusion_strength

    @property
    def fusion_at_eval(self) -> bool:
        return self.cfg.fusion_at_eval

    def delta_consistency(self, logits: ViewLogits, labels: torch.Tensor) -> torch.Tensor:
        mu = logits.uw.shape[0] // logits.lw.shape[0]
        if self.cfg.dc_variant == "avg":
            return dc_loss_avg(logits.lw, logits.ls, logits.uw, logits.us, mu)
        return dc_loss_class_dependent(
            logits.lw, logits.ls, logits.uw, logits.us, labels, mu,
            authors_scaling=self.cfg.dc_variant == "cd_authors",
        )

    def loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        loss, metrics = super().loss(logits, batch, step)  # type: ignore[misc]
        if self.cfg.lambda_dc > 0:
            loss_dc = self.delta_consistency(logits, batch.labels)
            loss = loss + self.cfg.lambda_dc * loss_dc
            metrics["loss_dc"] = loss_dc.detach()
            metrics["loss"] = loss.detach()
        return loss, metrics


class InterLUDEOptions(DeltaConsistencyOptions, PseudoLabelOptions):
    """InterLUDE: FixMatch plus embedding fusion and the delta-consistency loss."""


@register_algorithm("interlude", InterLUDEOptions)
class InterLUDE(DeltaConsistency, FixMatch):
    """L = L_sup + lambda_u L_unsup + lambda_dc L_DC, with embedding fusion (FixMatch base)."""
