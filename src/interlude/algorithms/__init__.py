"""Semi-supervised algorithms, one file each, with their losses as pure functions.

Each module registers its algorithm and options class with ``@register_algorithm(name,
Options)``; this package imports every module it holds, which is what registers them (the config
reads the registry :data:`interlude.config.ALGORITHMS`), so a new algorithm is one new module.
"""

from __future__ import annotations

from interlude.algorithms.base import (
    Algorithm,
    AlgorithmContext,
    Batch,
    PseudoLabelOptions,
    UnlabeledLossOptions,
    ViewLogits,
    register_algorithm,
)
from interlude.config import ALGORITHMS, AlgorithmOptions
from interlude.config.registry import import_submodules
from interlude.errors import ConfigError

import_submodules(__name__, __path__)  # each algorithm module registers itself

__all__ = [
    "Algorithm",
    "AlgorithmContext",
    "Batch",
    "PseudoLabelOptions",
    "UnlabeledLossOptions",
    "ViewLogits",
    "algorithm_class",
    "algorithm_names",
    "build_algorithm",
    "register_algorithm",
]


def algorithm_names() -> list[str]:
    return ALGORITHMS.names()


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm.name '{name}'. Available: {', '.join(algorithm_names())}")
    return ALGORITHMS.get(name).target


def build_algorithm(cfg: AlgorithmOptions, context: AlgorithmContext) -> Algorithm:
    """Instantiate the algorithm named by ``cfg.name`` with the run's ``context``."""
    return algorithm_class(cfg.name)(cfg, context)
