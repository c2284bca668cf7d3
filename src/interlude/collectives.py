"""Collectives that keep per-rank state identical under DDP; no-ops in a single process.

They live below both ``algorithms/`` and ``train/``: an algorithm whose state is a statistic of the
batch (FreeMatch's thresholds, FlexMatch's memory) needs them, but must not depend on the trainer.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def world_size() -> int:
    """Processes in the running group (1 without one)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return 1


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks when a process group is running; a no-op otherwise.

    For algorithms whose state is a statistic of the batch (FreeMatch's thresholds, class
    histograms): averaging the per-rank batch statistics keeps that state identical on every
    rank, as it would be for one process seeing the global batch.
    """
    size = world_size()
    if size > 1:
        torch_dist.all_reduce(tensor)
        tensor.div_(size)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate an equally shaped tensor from every rank (rank order); itself without a group.

    For per-sample algorithm state (FlexMatch's memory of confident predictions): every rank
    applies the updates of all ranks, so the state stays identical everywhere.
    """
    size = world_size()
    if size > 1:
        parts = [torch.empty_like(tensor) for _ in range(size)]
        torch_dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)
    return tensor
