"""Dataset registry: ``data.name`` -> loader ``(options) -> RawDataset``.

A dataset format registers its loader and its options class (a :class:`DataConfig` subclass
holding the keys only it reads) with ``@register_dataset(name, Options, default_arch=...)`` in
its own module; ``interlude/data/__init__.py`` imports every loader module.
"""

from __future__ import annotations

from interlude.config import DATASETS, DataConfig, register_dataset
from interlude.data.base import RawDataset
from interlude.errors import DataError

__all__ = ["dataset_names", "load_raw", "register_dataset"]


def dataset_names() -> list[str]:
    return sorted(DATASETS.names())


def load_raw(cfg: DataConfig) -> RawDataset:
    """Run the loader registered for ``cfg.name``."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown dataset '{cfg.name}'. Available: {', '.join(dataset_names())}")
    return DATASETS.get(cfg.name).target(cfg)
