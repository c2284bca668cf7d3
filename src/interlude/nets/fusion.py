"""Embedding fusion: InterLUDE's cross-instance mixing of intermediate features.

Row r of the forward batch becomes ``(1 - a) * h_r + a * h_(r+1 mod N)`` with gradients through
both terms. In the interdigitated layout a labeled row's neighbour is its own paired unlabeled
image, so the labeled loss also shapes the unlabeled features.

Fusion is a *training* regulariser: in eval mode the module is the identity, so a prediction never
depends on which other images share the batch (the authors' code fuses at test time too; set
``at_eval=True`` only to reproduce their published numbers).
"""

from __future__ import annotations

import torch
from torch import nn


def fuse_with_next(h: torch.Tensor, strength: float) -> torch.Tensor:
    """``(1 - strength) * h + strength * roll(h, -1, dim=0)``: row r mixed with row r+1 (cyclic)."""
    return torch.lerp(h, torch.roll(h, shifts=-1, dims=0), strength)


class EmbeddingFusion(nn.Module):
    """Identity unless ``strength > 0`` and (training or ``at_eval``)."""

    def __init__(self, strength: float = 0.0, at_eval: bool = False) -> None:
        super().__init__()
        self.strength = float(strength)
        self.at_eval = at_eval

    @property
    def active(self) -> bool:
        return self.strength > 0 and (self.training or self.at_eval)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return fuse_with_next(h, self.strength) if self.active else h

    def pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook that fuses the first input of ``module`` (timm backbones, where the
        fusion point is another library's module). Returning None leaves the input untouched."""
        if not self.active:
            return None
        if not args:
            raise RuntimeError(f"{type(module).__name__} got its input by keyword; fusion needs it "
                               "positional")
        return (self(args[0]), *args[1:])

    def extra_repr(self) -> str:
        return f"strength={self.strength}, at_eval={self.at_eval}"
