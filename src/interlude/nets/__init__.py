"""Backbones: built-in CNNs and any timm model. Each exposes ``model.fusion`` (an
:class:`EmbeddingFusion`) at its fusion point, fixed by :func:`build_net`."""

from __future__ import annotations

from torch import nn

from interlude.config import BACKBONES, DATASETS, ModelConfig
from interlude.config.registry import import_submodules
from interlude.errors import ConfigError
from interlude.nets.fusion import EmbeddingFusion, fuse_with_next
from interlude.nets.small_cnn import SmallCNN
from interlude.nets.wrn import WideResNet, wrn28_2, wrn28_8, wrn37_2

import_submodules(__name__, __path__)  # each backbone family module registers itself

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
    "wrn28_2",
    "wrn28_8",
    "wrn37_2",
]


def arch_names() -> list[str]:
    return BACKBONES.selector_values()


def pretrained_inputs(cfg: ModelConfig):
    """Input size, resize filter and mean/std of the pretrained weights ``cfg`` asks for (a
    :class:`~interlude.nets.timm_net.Inputs`), or None (random init or a built-in net)."""
    if cfg.pretrained is False or not type(cfg).has_pretrained_weights:
        return None
    from interlude.nets.timm_net import pretrained_inputs as lookup

    return lookup(cfg)


def resolve_arch(arch: str, dataset: str, resolution: int) -> str:
    """``arch`` itself, or for ``auto`` the network the dataset registered as its default (by
    size for other data). Called once, when a run's config is resolved against its data."""
    if arch != "auto":
        return arch
    default = DATASETS.get(dataset).info.get("default_arch") if dataset in DATASETS else None
    if default is not None:
        return default
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
    family = BACKBONES.selecting(arch)
    if family is None:
        raise ConfigError(f"unknown model.arch '{arch}'. Available: {', '.join(arch_names())}")
    model = family.target(arch, cfg, num_classes, in_channels, resolution)
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
