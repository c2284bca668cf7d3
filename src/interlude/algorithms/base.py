"""The interface every algorithm implements.

An algorithm says which views it needs forwarded and turns their logits into a loss. It owns no
model, optimizer or data, so it can be unit-tested on hand-made logits. Stateful algorithms
(FreeMatch thresholds, FlexMatch counts) keep their state in registered buffers, which puts it in
checkpoints and moves it with ``.to(device)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from interlude.config import AlgorithmConfig

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


class Algorithm(nn.Module):
    """Base class; subclasses set ``views``/``uses_fusion`` and implement :meth:`loss`."""

    name = "base"
    views: tuple[str, ...] = ("lw",)
    uses_fusion = False

    def __init__(
        self,
        cfg: AlgorithmConfig,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.register_buffer(
            "class_weights", class_weights if class_weights is not None else torch.empty(0)
        )

    @property
    def uses_unlabeled(self) -> bool:
        return "uw" in self.views or "us" in self.views

    @property
    def fusion_strength(self) -> float:
        return self.cfg.fusion_strength if self.uses_fusion else 0.0

    @property
    def supervised_weights(self) -> torch.Tensor | None:
        return self.class_weights if self.class_weights.numel() else None

    def loss(self, logits: ViewLogits, batch: Batch, step: int) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError
