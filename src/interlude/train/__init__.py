"""Training: build the parts of a run from its config and run the loop.

``run(cfg)`` is the whole pipeline used by the CLI, sweeps and the Python estimator::

    data = build_data(cfg.data)             # labeled / unlabeled / val / test
    model = build_net(cfg.model, ...)       # backbone with a fusion point
    algorithm = build_algorithm(cfg.algorithm, ...)
    Trainer(cfg, data, model, algorithm, run_dir, device).fit()
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interlude.algorithms import build_algorithm
from interlude.config import Config
from interlude.data import SSLData, build_data, save_split
from interlude.errors import ConfigError
from interlude.nets import build_net
from interlude.train.distributed import DistContext, init_from_env
from interlude.train.loop import Trainer

__all__ = ["Trainer", "build_trainer", "resolve_device", "run", "run_dir_for"]

log = logging.getLogger("interlude")


def resolve_device(name: str, dist: DistContext | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank if dist else 0)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


def run_dir_for(cfg: Config) -> Path:
    name = cfg.train.run_name or f"{cfg.data.name}-{cfg.algorithm.name}-s{cfg.train.seed}"
    return Path(cfg.train.out_dir) / name


def class_weights_for(data: SSLData) -> torch.Tensor:
    """Normalised inverse labeled class frequency (the authors' TMED weighting)."""
    counts = np.bincount(data.labeled.labels, minlength=data.num_classes).astype(np.float64)
    inverse = 1.0 / np.maximum(counts, 1)
    return torch.tensor(inverse / inverse.sum(), dtype=torch.float32)


def build_trainer(
    cfg: Config,
    run_dir: Path,
    data: SSLData | None = None,
    dist: DistContext | None = None,
) -> Trainer:
    """Build data, model and algorithm for ``cfg`` (seeded by ``train.seed``) and a Trainer."""
    dist = dist or DistContext()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, dist)
    data = data if data is not None else build_data(cfg.data)
    torch.manual_seed(cfg.train.seed)
    channels, height, _ = data.image_shape
    model = build_net(cfg.model, data.num_classes, channels, height, cfg.data.name)
    weights = class_weights_for(data) if cfg.data.class_weighted_loss else None
    algorithm = build_algorithm(
        cfg.algorithm, data.num_classes, weights, num_unlabeled=len(data.unlabeled)
    )
    return Trainer(cfg, data, model, algorithm, run_dir, device, dist)


def run(
    cfg: Config,
    resume: bool = False,
    stop_after: int | None = None,
    data: SSLData | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a run described by ``cfg``; returns its run directory.

    ``resume`` continues from ``<run dir>/checkpoints/last.pt``; ``stop_after`` trains only up to
    that step (a checkpoint is written there), e.g. to train in chunks.
    """
    dist = init_from_env(cfg.train.device)
    run_dir = run_dir_for(cfg)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not resume and checkpoint.exists() and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start "
            "over, or set train.run_name"
        )
    if resume and not checkpoint.exists():
        log.warning("no checkpoint in %s: starting from scratch", run_dir)
        resume = False
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, run_dir, data, dist)
    if dist.is_main:
        cfg.save(run_dir / "config.yaml")
        save_split(trainer.data, run_dir / "split.json")
        _write_data_notes(trainer.data, run_dir)
    if resume:
        trainer.load_checkpoint(checkpoint)
        log.info("resumed %s at step %d", run_dir, trainer.step)
    trainer.fit(stop_after=stop_after)
    dist.barrier()  # rank 0 has written summary.json before any rank returns
    return run_dir


def _write_data_notes(data: SSLData, run_dir: Path) -> None:
    info: dict[str, Any] = {
        "labeled": len(data.labeled),
        "unlabeled": len(data.unlabeled),
        "val": len(data.val) if data.val is not None else 0,
        "test": len(data.test) if data.test is not None else 0,
        "image_shape": list(data.image_shape),
        "classes": list(data.class_names),
    }
    log.info("data: %s", ", ".join(f"{k}={v}" for k, v in info.items() if k != "classes"))
