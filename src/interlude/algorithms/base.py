"""The interface every algorithm implements.

An algorithm says which views it needs forwarded and turns their logits into a loss. It owns no
model, optimizer or data, so it can be unit-tested on hand-made logits. Stateful algorithms
(FreeMatch thresholds, FlexMatch counts) keep their state in registered buffers, which puts it in
checkpoints and moves it with ``.to(device)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from interlude.config import AlgorithmOptions, register_algorithm

Metrics = dict[str, torch.Tensor]


def pseudo_label_metrics(mask: torch.Tensor, targets: torch.Tensor, num_classes: int) -> Metrics:
    """``mask_rate`` and ``pl_counts``: how many unlabeled rows passed the mask, and per class.

    ``pl_counts[c]`` is the (mask-weighted) number of rows pseudo-labelled ``c`` this step, the
    histogram users compare with the labeled prior when SSL underperforms on many or imbalanced
    classes. It is counted with ``scatter_add_`` into a fixed-size buffer (``bincount`` would
    read its size back from the device every step).
    """
    counts = torch.zeros(num_classes, device=mask.device).scatter_add_(0, targets, mask.float())
    return {"mask_rate": mask.float().mean(), "pl_counts": counts}


@dataclass
class Batch:
    """What one training step feeds the network and the loss, built by the input pipeline.

    ``x`` holds the augmented, normalised views in natural order ``[lw, uw, ls, us]`` (views the
    algorithm does not use are left out); ``labels`` are those of the labeled rows; the indices
    say which images of the labeled / unlabeled pools the rows are (``unlabeled_indices`` flat in
    ``i * mu + j`` order), for algorithms with per-image state such as FlexMatch. Everything an
    algorithm learns about a step comes through here, never through attributes set from outside.
    """

    labels: torch.Tensor
    unlabeled_indices: torch.Tensor | None = None
    labeled_indices: torch.Tensor | None = None
    x: torch.Tensor | None = None


@dataclass
class ViewLogits:
    """Logits of one step in natural order. Unlabeled rows are ordered ``i * mu + j``."""

    lw: torch.Tensor
    uw: torch.Tensor | None = None
    ls: torch.Tensor | None = None
    us: torch.Tensor | None = None


@dataclass(frozen=True)
class AlgorithmContext:
    """What the run tells an algorithm when it is built, one object whatever the algorithm uses:
    the number of classes, the size of the unlabeled pool (per-image state such as FlexMatch's)
    and the supervised class weights (``data.class_weighted_loss``; None = unweighted)."""

    num_classes: int
    num_unlabeled: int = 0
    class_weights: torch.Tensor | None = None


class UnlabeledLossOptions(AlgorithmOptions):
    """Options of every algorithm with an unlabeled loss."""

    lambda_u: float = Field(1.0, ge=0, le=1e4)
    """Weight of the unlabeled (pseudo-label) loss."""


class PseudoLabelOptions(UnlabeledLossOptions):
    """Options of the algorithms thresholding softmax pseudo-labels (FixMatch and its kin)."""

    threshold: float = Field(0.95, gt=0, le=1)
    """Confidence threshold tau of the pseudo-labels (FlexMatch: of the best-learned class)."""
    temperature: float = Field(1.0, gt=0, le=1e4)
    """Softmax temperature for pseudo-labels."""


class Algorithm(nn.Module):
    """Base class; subclasses set ``views`` (and ``uses_fusion``), implement :meth:`loss` and
    register with ``@register_algorithm(name, OptionsClass)``.

    ``uses_unlabeled`` (derived from ``views``) is what the config asks to allow ``train.mu=0``;
    ``fusion_strength`` / ``fusion_at_eval`` are what the network is built with.
    """

    name: ClassVar[str] = "base"
    options_class: ClassVar[type[AlgorithmOptions]] = AlgorithmOptions
    views: tuple[str, ...] = ("lw",)
    uses_unlabeled: ClassVar[bool] = False
    uses_fusion: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.uses_unlabeled = "uw" in cls.views or "us" in cls.views

    def __init__(self, cfg: AlgorithmOptions, context: AlgorithmContext) -> None:
        super().__init__()
        self.cfg = cfg
        self.context = context
        self.num_classes = context.num_classes
        weights = context.class_weights
        self.register_buffer("class_weights", weights if weights is not None else torch.empty(0))

    @property
    def fusion_strength(self) -> float:
        """Embedding fusion alpha the network is built with (0 = off)."""
        return 0.0

    @property
    def fusion_at_eval(self) -> bool:
        return False

    @property
    def supervised_weights(self) -> torch.Tensor | None:
        return self.class_weights if self.class_weights.numel() else None

    def loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError


__all__ = ["Algorithm", "AlgorithmContext", "Batch", "Metrics", "PseudoLabelOptions",
           "UnlabeledLossOptions", "ViewLogits", "pseudo_label_metrics", "register_algorithm"]
