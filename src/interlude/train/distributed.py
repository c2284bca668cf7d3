"""Distributed data parallel (``torchrun``) support.

Without ``torchrun`` every helper here is a no-op for a single process, so the loop has one code
path. The global labeled batch (``train.batch_size``) is fixed and split across ranks; each rank
lays out and fuses its own shard (fusion partners never cross ranks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        if not self.enabled:
            return model
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        torch_dist.all_reduce(tensor)
        return tensor / self.world_size

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return tensor

    def evaluate(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run an evaluation (every rank computes the same full-set result for now)."""
        return fn()


def init_from_env() -> DistContext:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch_dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistContext(rank, world_size, local_rank)
