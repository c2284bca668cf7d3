"""Distributed data parallel (``torchrun``) support.

Without ``torchrun`` every helper here is a no-op for a single process, so the loop has one code
path. Semantics (see ``docs/distributed.md``):

- ``train.batch_size`` is the *global* labeled batch; each of the N ranks takes a contiguous
  ``batch_size / N`` rows of the step's counter-based sample (``data/sampler.py``), so N GPUs cut
  wall-clock time at the same optimisation trajectory.
- Layout and fusion are per rank: each rank interdigitates and fuses its own shard (fusion
  partners never cross ranks, so the one cyclic wrap-around row per rank differs from one process).
- Gradients are averaged by DDP; every loss is a mean over equally sized per-rank row sets, so the
  averaged gradient equals the single-process gradient of the global batch (BatchNorm statistics
  excepted: they are per rank unless ``train.sync_bn``).
- Evaluation is sharded by whole eval batches and the predictions are gathered, so every rank
  computes the same metrics (:func:`interlude.train.evaluate.evaluate_model`); only rank 0 logs
  and writes checkpoints.
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from interlude.errors import ConfigError

log = logging.getLogger("interlude")


@dataclass
class DistContext:
    """This process's place in the job; without ``torchrun`` there is no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False
    """Started by ``torchrun``: a process group runs and the model is DDP-wrapped, also for one
    process (so a one-GPU ``torchrun`` exercises the same code path as eight)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    # ------------------------------------------------------------------ model
    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """DDP-wrap ``model`` (optionally with SyncBatchNorm); the model itself is unchanged.

        ``convert_sync_batchnorm`` replaces BatchNorm children in place and keeps the same
        parameter and buffer tensors, so the optimizer and the EMA built on ``model`` stay valid.
        """
        if not self.enabled:
            return model
        on_cuda = next(model.parameters()).is_cuda
        if sync_bn:
            if not on_cuda:
                raise ConfigError(
                    "train.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); "
                    "set train.sync_bn=false for CPU/gloo runs"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [self.local_rank] if on_cuda else None
        if self.is_main:
            log.info("DDP over %d process(es), backend %s", self.world_size,
                     torch_dist.get_backend())
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        DDP broadcasts buffers at the *start* of each forward, so after the last training step
        every rank holds statistics updated by its own shard; evaluating those would make the
        gathered metrics a mix of N models.
        """
        if not self.enabled:
            return
        for buffer in module.buffers():
            torch_dist.broadcast(buffer, src=0)

    # ------------------------------------------------------------------ collectives
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

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a Ctrl-C seen by one)."""
        if not self.enabled:
            return flag
        value = torch.tensor(float(flag), device=device)
        return bool(self.all_reduce_max(value).item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, obj)
        return gathered


def shard_range(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank`` when ``n`` rows are split in whole batches.

    The ``ceil(n / batch_size)`` batches are dealt out contiguously (the first ranks get one more
    when they do not divide), so concatenating the shards in rank order restores the full set.
    """
    batches = -(-n // batch_size)
    per_rank, extra = divmod(batches, world_size)
    first = rank * per_rank + min(rank, extra)
    count = per_rank + (1 if rank < extra else 0)
    return min(n, first * batch_size), min(n, (first + count) * batch_size)


def _destroy_group() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` (any number of processes, one too).

    The backend is NCCL when this rank trains on CUDA and gloo otherwise (``train.device=cpu``
    on a GPU machine included). Ranks other than 0 log warnings only.
    """
    if not launched_by_torchrun():
        return DistContext()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(_destroy_group)
    if rank != 0:
        log.setLevel(logging.WARNING)
    return DistContext(rank, world_size, local_rank, launched=True)


def launched_by_torchrun() -> bool:
    """``torchrun`` (or any ``env://`` launcher) set the rendezvous variables of this process."""
    return all(key in os.environ for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))
