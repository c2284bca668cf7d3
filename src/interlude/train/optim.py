"""Optimizer and learning-rate schedule of FixMatch/InterLUDE."""

from __future__ import annotations

import math

import torch
from torch import nn

from interlude.config import TrainConfig


def split_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: conv/linear weights decay; BatchNorm parameters and biases do not.

    Parameters with one dimension (biases, norm scales/shifts) are exactly the ones the authors
    exclude by name ("bias", "bn"); testing the shape also covers layers that are not named bn.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def cosine_factor(step: int, total_steps: int, cycles: float = 7.0 / 16.0) -> float:
    """LR multiplier ``max(0, cos(pi * cycles * step / total_steps))``; 7/16 ends at ~0.195."""
    return max(0.0, math.cos(math.pi * cycles * step / max(1, total_steps)))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        groups = _vit_groups(model, cfg) or split_decay_groups(model, cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    groups = _vit_groups(model, cfg) if cfg.layer_decay != 1.0 else None
    groups = groups or split_decay_groups(model, cfg.weight_decay)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True
    )


def _vit_groups(model: nn.Module, cfg: TrainConfig) -> list[dict] | None:
    try:
        from interlude.nets.vit import is_vit, vit_param_groups
    except ImportError:
        return None
    if not is_vit(model):
        return None
    return vit_param_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    steps, cycles = cfg.steps, cfg.cosine_cycles
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, steps, cycles)
    )
