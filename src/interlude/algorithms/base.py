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

    def loss(
        self, logits: ViewLogits, labels: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError
