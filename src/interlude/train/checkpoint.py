"""Checkpoints that survive interruption and load with ``torch.load(weights_only=True)``.

A checkpoint is written to a temporary file in the same folder, flushed to disk and then renamed
over the old one (``os.replace`` is atomic), so a crash mid-write never leaves a half-written
checkpoint behind. Everything in it is a tensor, number, string, list or dict: no pickled objects.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from interlude.errors import CheckpointError

FORMAT_VERSION = 1


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`, turning any failure into one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not an interlude checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); delete it to start over, "
            "or point --resume at another run"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not an interlude checkpoint of format {FORMAT_VERSION}"
        )
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(saved: dict, current: dict, ignore: set[str]) -> list[str]:
    """Dotted keys whose values differ between two ``Config.to_dict()`` trees."""
    diffs = []
    for section, values in current.items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            old = saved.get(section, {}).get(key)
            if dotted not in ignore and old != value:
                diffs.append(f"{dotted}: checkpoint {old!r} vs now {value!r}")
    return diffs
