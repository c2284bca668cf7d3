"""Optimizer and learning-rate schedule of FixMatch/InterLUDE.

Parameter groups come from timm's helpers, so every backbone is treated the way the field treats
it: no weight decay on 1-d parameters (norm scales and shifts, biases) nor on what the model
lists in ``no_weight_decay()`` (a ViT's position embedding and tokens), and, with
``train.layer_decay < 1``, BEiT/USB layer-wise lr decay by the model's own ``group_matcher``
(embeddings lowest, head at the full rate). timm gives each group an ``lr_scale``; it becomes the
group's ``lr`` here, which our cosine ``LambdaLR`` then scales like any other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from interlude.config import TrainConfig
from interlude.errors import ConfigError


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 layer_decay: float = 1.0) -> list[dict]:
    """Optimizer groups: decay / no decay, per layer when ``layer_decay < 1`` (timm's helpers)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    if layer_decay < 1.0:
        if not hasattr(model, "group_matcher"):
            raise ConfigError(
                f"train.layer_decay={layer_decay} needs a backbone with layers timm can group "
                "(model.arch=timm/<name>); set train.layer_decay=1 for this network"
            )
        groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip,
                                          layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale", 1.0)
    return groups


def cosine_factor(step: int, total_steps: int, cycles: float = 7.0 / 16.0) -> float:
    """LR multiplier ``max(0, cos(pi * cycles * step / total_steps))``; 7/16 ends at ~0.195."""
    return max(0.0, math.cos(math.pi * cycles * step / max(1, total_steps)))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=True
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    steps, cycles = cfg.steps, cfg.cosine_cycles
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_factor(step, steps, cycles)
    )
