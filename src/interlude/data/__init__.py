"""Datasets: loaders (``registry``), the labeled split (``splits``) and augmentation (``augment``)."""

from __future__ import annotations

from interlude.config import DataConfig
from interlude.config.registry import import_submodules
from interlude.data.base import UNLABELED, ImageSet, RawDataset, SSLData
from interlude.data.registry import dataset_names, load_raw, register_dataset
from interlude.data.splits import build_ssl_data

import_submodules(__name__, __path__)  # each dataset format module registers itself

__all__ = [
    "UNLABELED",
    "ImageSet",
    "RawDataset",
    "SSLData",
    "build_data",
    "dataset_names",
    "load_raw",
    "register_dataset",
]


def build_data(cfg: DataConfig) -> SSLData:
    """Load the dataset named in ``cfg`` and draw its labeled split.

    With ``data.unlabeled_from``/``data.test_from`` the other datasets are loaded too, converted
    to this one's image geometry (``interlude.data.sources``); the test set is swapped before
    the open set, which then keeps only the labeled classes of whichever test set it is.
    """
    raw = load_raw(cfg)
    if cfg.resolution is not None:  # before the open set: large splits already come resized
        from interlude.data.transforms import resize_raw

        raw = resize_raw(raw, cfg.resolution, cfg.interpolation or "bilinear")
    sources = None
    from interlude.data.sources import is_mixed, mixed_sources

    if is_mixed(cfg):
        raw, sources = mixed_sources(raw, cfg)
    if cfg.labeled_classes is not None or cfg.outlier_ratio > 0:
        from interlude.data.openset import make_open_set

        raw = make_open_set(raw, cfg)
    return build_ssl_data(raw, cfg, sources)
