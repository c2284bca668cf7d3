"""Shared fixtures. Tests run on CPU with one thread so they behave the same on 2-core CI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


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
