"""Exponential moving average of the weights, used for evaluation.

Floating-point parameters are averaged with one fused ``torch._foreach_lerp_`` call per step
(no Python loop over tensors); buffers such as BatchNorm running statistics are copied, as in the
authors' code.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)
        self._ema_params = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        self._ema_buffers = list(self.module.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- ema + (1 - decay) * (model - ema) for parameters; buffers copied."""
        source = unwrap(model)
        params = [p for p in source.parameters() if p.dtype.is_floating_point]
        torch._foreach_lerp_(self._ema_params, params, 1.0 - self.decay)
        if self._ema_buffers:
            torch._foreach_copy_(self._ema_buffers, list(source.buffers()))

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
