"""Dataset registry: name -> loader ``(DataConfig) -> RawDataset``."""

from __future__ import annotations

from collections.abc import Callable

from interlude.config import DataConfig
from interlude.data.base import RawDataset
from interlude.errors import DataError

Loader = Callable[[DataConfig], RawDataset]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        _LOADERS[name] = fn
        return fn

    return wrap


def dataset_names() -> list[str]:
    _import_builtin_loaders()
    return sorted(_LOADERS)


def load_raw(cfg: DataConfig) -> RawDataset:
    """Run the loader registered for ``cfg.name``."""
    _import_builtin_loaders()
    if cfg.name not in _LOADERS:
        raise DataError(
            f"unknown dataset '{cfg.name}'. Available: {', '.join(sorted(_LOADERS))}"
        )
    return _LOADERS[cfg.name](cfg)


def _import_builtin_loaders() -> None:
    """Import modules whose loaders register themselves (kept lazy to keep `import` fast)."""
    import importlib

    for module in ("builtin", "standard", "folder"):
        try:
            importlib.import_module(f"interlude.data.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"interlude.data.{module}":
                raise
