"""Semi-supervised algorithms, one file each, with their losses as pure functions.

Each module registers its algorithm and options class with ``@register_algorithm(name,
Options)``; importing every module here is what registers them (the config reads the registry
:data:`interlude.config.ALGORITHMS`), so a new algorithm is one new module plus one line below.
"""

from __future__ import annotations

from interlude.algorithms import (  # noqa: F401  (imported to register)
    fixmatch,
    flexmatch,
    freematch,
    interlude,
    interlude_plus,
    supervised,
)
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
from interlude.errors import ConfigError

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
