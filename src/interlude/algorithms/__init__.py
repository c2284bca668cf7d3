"""Semi-supervised algorithms, one file each, with their losses as pure functions."""

from __future__ import annotations

import importlib

import torch

from interlude.algorithms.base import Algorithm, Batch, ViewLogits
from interlude.config import AlgorithmConfig
from interlude.errors import ConfigError

# name -> (module, class); modules are imported on demand
_ALGORITHMS = {
    "supervised": ("supervised", "Supervised"),
    "fixmatch": ("fixmatch", "FixMatch"),
    "interlude": ("interlude", "InterLUDE"),
    "freematch": ("freematch", "FreeMatch"),
    "flexmatch": ("flexmatch", "FlexMatch"),
    "interlude_plus": ("interlude_plus", "InterLUDEPlus"),
}

__all__ = ["Algorithm", "Batch", "ViewLogits", "algorithm_names", "build_algorithm"]


def algorithm_names() -> list[str]:
    return list(_ALGORITHMS)


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in _ALGORITHMS:
        raise ConfigError(
            f"unknown algorithm.name '{name}'. Available: {', '.join(_ALGORITHMS)}"
        )
    module, cls = _ALGORITHMS[name]
    return getattr(importlib.import_module(f"interlude.algorithms.{module}"), cls)


def build_algorithm(
    cfg: AlgorithmConfig,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    num_unlabeled: int = 0,
) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.name``."""
    cls = algorithm_class(cfg.name)
    if getattr(cls, "needs_unlabeled_count", False):
        return cls(cfg, num_classes, class_weights, num_unlabeled=num_unlabeled)
    return cls(cfg, num_classes, class_weights)
