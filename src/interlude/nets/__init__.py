"""Backbones. Each exposes ``model.fusion`` (an :class:`EmbeddingFusion`) at its fusion point."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from interlude.config import ModelConfig
from interlude.errors import ConfigError
from interlude.nets.fusion import EmbeddingFusion, fuse_with_next
from interlude.nets.small_cnn import SmallCNN
from interlude.nets.wrn import WideResNet, wrn28_2, wrn28_8, wrn37_2

__all__ = [
    "EmbeddingFusion",
    "SmallCNN",
    "WideResNet",
    "arch_names",
    "build_net",
    "default_arch",
    "fuse_with_next",
]

_CNN_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "wrn28_2": wrn28_2,
    "wrn28_8": wrn28_8,
    "wrn37_2": wrn37_2,
}

_DEFAULT_ARCH = {
    "digits": "small_cnn",
    "mnist5k": "small_cnn",
    "cifar10": "wrn28_2",
    "cifar100": "wrn28_8",
    "svhn": "wrn28_2",
    "stl10": "wrn37_2",
}


def arch_names() -> list[str]:
    return ["small_cnn", *_CNN_BUILDERS, "vit_tiny", "vit_small", "vit_base"]


def default_arch(dataset: str, resolution: int) -> str:
    if dataset in _DEFAULT_ARCH:
        return _DEFAULT_ARCH[dataset]
    return "small_cnn" if resolution <= 28 else "wrn28_2"


def build_net(
    cfg: ModelConfig,
    num_classes: int,
    in_channels: int,
    resolution: int,
    dataset: str = "",
) -> nn.Module:
    """Build the backbone named by ``cfg.arch`` ('auto' picks one for the dataset)."""
    arch = default_arch(dataset, resolution) if cfg.arch == "auto" else cfg.arch
    if arch == "small_cnn":
        return SmallCNN(num_classes, in_channels, cfg.width, cfg.fusion_layer)
    if arch in _CNN_BUILDERS:
        return _CNN_BUILDERS[arch](num_classes, in_channels, cfg.fusion_layer)
    if arch.startswith("vit"):
        from interlude.nets.vit import build_vit

        return build_vit(arch, cfg, num_classes, in_channels, resolution)
    raise ConfigError(f"unknown model.arch '{arch}'. Available: {', '.join(arch_names())}")
