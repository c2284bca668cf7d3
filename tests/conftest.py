"""Shared fixtures. Tests run on CPU with one thread so they behave the same on 2-core CI.

Tests marked ``cuda`` check behaviour only a GPU has (device kernels, bf16, channels_last,
inductor, NCCL). Without a CUDA device they are deselected, not skipped: they cannot run here,
and the header says how many were left out; ``python benchmarks/gpu_check.py`` runs them on a GPU
(``pytest -m cuda``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

_deselected_cuda: list[str] = []


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if cuda:
        _deselected_cuda.extend(item.nodeid for item in cuda)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]
        config.hook.pytest_deselected(items=cuda)


def pytest_report_collectionfinish(config, start_path, items):
    if _deselected_cuda:
        return (f"{len(_deselected_cuda)} CUDA-only tests deselected (no CUDA device here); "
                "benchmarks/gpu_check.py runs them on a GPU")
    return None


@pytest.fixture(autouse=True)
def image_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test gets its own image cache folder (never the user's ~/.cache); subprocesses
    started by a test inherit it through the environment."""
    folder = tmp_path_factory.mktemp("image-cache")
    monkeypatch.setenv("INTERLUDE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """Overrides for a fast digits run in a temporary folder."""
    return [
        "data.name=digits",
        "model.width=8",
        "train.batch_size=8",
        "train.mu=2",
        "train.steps=12",
        "train.eval_interval=6",
        "train.log_interval=3",
        "train.checkpoint_interval=6",
        "train.progress=false",
        "train.device=cpu",
        f"train.out_dir={tmp_path / 'runs'}",
    ]
