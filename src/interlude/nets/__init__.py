"""Backbones: built-in CNNs and any timm model. Each exposes ``model.fusion`` (an
:class:`EmbeddingFusion`) at its fusion point, fixed by :func:`build_net`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from interlude.config import ModelConfig, is_timm_backbone
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
    "classifier_layer",
    "pretrained_inputs",
    "resolve_arch",
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
    return ["small_cnn", *_CNN_BUILDERS, "timm/<any timm model>"]


def pretrained_inputs(cfg: ModelConfig):
    """Input size, resize filter and mean/std of the pretrained weights ``cfg`` asks for (a
    :class:`~interlude.nets.timm_net.Inputs`), or None (random init or a built-in net)."""
    if cfg.pretrained is False or not is_timm_backbone(cfg.arch):
        return None
    from interlude.nets.timm_net import pretrained_inputs as lookup

    return lookup(cfg)


def resolve_arch(arch: str, dataset: str, resolution: int) -> str:
    """``arch`` itself, or for ``auto`` the network the dataset is benchmarked with (by size
    for other data). Called once, when a run's config is resolved against its data."""
    if arch != "auto":
        return arch
    if dataset in _DEFAULT_ARCH:
        return _DEFAULT_ARCH[dataset]
    return "small_cnn" if resolution <= 28 else "wrn28_2"


def build_net(
    cfg: ModelConfig,
    num_classes: int,
    in_channels: int,
    resolution: int,
    dataset: str = "",
    fusion_strength: float = 0.0,
    fusion_at_eval: bool = False,
) -> nn.Module:
    """Build the backbone named by ``cfg.arch`` ('auto' picks one for the dataset).

    Fusion is fixed here, when the net is built: training passes the algorithm's strength,
    every inference path builds with the default (off), so no caller patches it afterwards.
    """
    arch = resolve_arch(cfg.arch, dataset, resolution)
    if arch == "small_cnn":
        model = SmallCNN(num_classes, in_channels, cfg.width, cfg.fusion_layer)
    elif arch in _CNN_BUILDERS:
        model = _CNN_BUILDERS[arch](num_classes, in_channels, cfg.fusion_layer)
    elif is_timm_backbone(arch):
        from interlude.nets.timm_net import build_timm_net  # timm is imported only when used

        model = build_timm_net(arch, cfg, num_classes, in_channels, resolution)
    else:
        raise ConfigError(f"unknown model.arch '{arch}'. Available: {', '.join(arch_names())}")
    model.fusion.strength = float(fusion_strength)
    model.fusion.at_eval = bool(fusion_at_eval)
    return model


def classifier_layer(model: nn.Module) -> nn.Module:
    """The final linear layer of any interlude network: its input is the penultimate-layer
    embedding (what active learning measures diversity on), found here once for every backbone.

    Built-in CNNs keep it as ``fc`` (:class:`~interlude.nets.staged.StagedNet`); timm models
    name it through ``get_classifier()``.
    """
    layer = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{type(model).__name__} has no final linear classifier to take "
                          "embeddings from; use a built-in network or a timm classifier")
    return layer
