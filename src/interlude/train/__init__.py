"""Training: the one :func:`run` that the CLI, sweeps and the Python estimator call.

``run(cfg)`` owns a run from start to end::

    with RunDir(...) as run_dir:                # one owner; stale locks and temp files cleaned
        cfg = resolve_inputs(cfg)               # a pretrained backbone's size, filter, mean/std
        data = build_data(cfg.data)             # labeled / unlabeled / val / test
        cfg = resolve_config(cfg, data)         # model.arch=auto resolved, once
        check_resumable(...)                    # resume: compatible before anything is written
        trainer = _assemble(cfg, data, ...)     # algorithm, model (fusion fixed), Trainer
        write config.yaml + split.json          # (after --overwrite cleared the old run)
        trainer.fit()
        warn_signatures(...)                    # failure signatures of the finished run, logged

Nothing is written to the run directory until the run is known to be valid, so a refused resume or
a failed start leaves the directory as it was.
"""

from __future__ import annotations

import copy
import json
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interlude.algorithms import AlgorithmContext, build_algorithm
from interlude.artifact import Checkpoint, RunMeta, interlude_weights, write_atomic
from interlude.config import Config, diff, replaced
from interlude.data import SSLData, build_data
from interlude.errors import CheckpointError, ConfigError, InterludeError
from interlude.files import parse_json
from interlude.nets import build_net, pretrained_inputs, resolve_arch
from interlude.rundir import RunDir
from interlude.train.distributed import DistContext, init_from_env
from interlude.train.loop import Trainer

__all__ = ["RunResult", "Trainer", "build_trainer", "resolve_config", "resolve_device",
           "resolve_inputs", "run", "run_dir_for"]

log = logging.getLogger("interlude")


@dataclass
class RunResult:
    """What :func:`run` returns on every rank."""

    run_dir: Path
    summary: dict[str, Any]
    weights: Checkpoint
    """The final state, weights only, on the CPU (the estimator keeps it)."""
    stop_signal: int | None = None
    """SIGINT/SIGTERM/SIGHUP when the run was interrupted (a checkpoint was saved)."""

    @property
    def finished(self) -> bool:
        return not self.summary.get("interrupted", False)

    @property
    def stop_reason(self) -> str | None:
        if self.stop_signal is not None:
            return signal.Signals(self.stop_signal).name
        return None if self.finished else "stop_after"


def resolve_device(name: str, dist: DistContext | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank if dist else 0)
        return torch.device("cpu")
    device = torch.device(name)
    available = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}
    if device.type in available and not available[device.type]():
        raise ConfigError(f"train.device={name} but {device.type.upper()} is not available; use "
                          "train.device=cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name} but this machine has {torch.cuda.device_count()} "
                          "CUDA device(s), cuda:0 onwards; use train.device=cuda (or auto)")
    return device


def run_dir_for(cfg: Config) -> Path:
    name = cfg.train.run_name or f"{cfg.data.name}-{cfg.algorithm.name}-s{cfg.train.seed}"
    return Path(cfg.train.out_dir) / name


def resolve_inputs(cfg: Config) -> Config:
    """A copy of ``cfg`` with the input size, resize filter and mean/std of a pretrained timm
    backbone filled in where ``data.resolution`` / ``interpolation`` / ``mean`` and ``std`` are
    left unset (from timm's pretrained config: a table lookup, no download).

    Images are resized when they are loaded, so this is decided from the config alone, before
    the data; the values land in the saved ``config.yaml``, so eval, export and resume reproduce
    them. Keys the user set are kept.
    """
    inputs = pretrained_inputs(cfg.model)
    resolved = copy.deepcopy(cfg)
    if inputs is not None:
        d = resolved.data
        d.resolution = inputs.size if d.resolution is None else d.resolution
        d.interpolation = d.interpolation or inputs.interpolation
        if d.mean is None:
            d.mean, d.std = list(inputs.mean), list(inputs.std)
    return resolved


def resolve_config(cfg: Config, data: SSLData) -> Config:
    """A copy of ``cfg`` with what depends on the data decided (``model.arch=auto``)."""
    resolved = copy.deepcopy(cfg)
    # the resolved arch's own options class (auto holds every built-in network's options)
    resolved.model = replaced(cfg.model, arch=resolve_arch(cfg.model.arch, cfg.data.name,
                                                           data.image_shape[1]))
    return resolved


def class_weights_for(data: SSLData) -> torch.Tensor:
    """Normalised inverse labeled class frequency (the authors' TMED weighting)."""
    counts = np.bincount(data.labeled.labels, minlength=data.num_classes).astype(np.float64)
    inverse = 1.0 / np.maximum(counts, 1)
    return torch.tensor(inverse / inverse.sum(), dtype=torch.float32)


def build_trainer(
    cfg: Config,
    run_dir: RunDir | Path,
    data: SSLData | None = None,
    dist: DistContext | None = None,
    pretrained: bool = True,
) -> Trainer:
    """Build data, algorithm and model for ``cfg`` (seeded by ``train.seed``) and a Trainer.

    ``pretrained=False`` skips ``model.pretrained`` (random init): a resumed run overwrites every
    weight from its checkpoint, so it needs neither the weights file nor the network.
    """
    cfg = resolve_inputs(cfg)
    data = data if data is not None else build_data(cfg.data)
    return _assemble(resolve_config(cfg, data), data, run_dir, dist or DistContext(), pretrained)


def _assemble(cfg: Config, data: SSLData, run_dir: RunDir | Path, dist: DistContext,
              pretrained: bool) -> Trainer:
    """Algorithm, model and Trainer for a config already resolved against ``data``."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device, dist)
    torch.manual_seed(cfg.train.seed)
    weights = class_weights_for(data) if cfg.data.class_weighted_loss else None
    context = AlgorithmContext(data.num_classes, len(data.unlabeled), weights)
    algorithm = build_algorithm(cfg.algorithm, context)
    channels, height, _ = data.image_shape
    model_cfg = cfg.model if pretrained else cfg.model.model_copy(update={"pretrained": False})
    model = build_net(model_cfg, data.num_classes, channels, height, cfg.data.name,
                      fusion_strength=algorithm.fusion_strength,
                      fusion_at_eval=algorithm.fusion_at_eval)
    return Trainer(cfg, data, model, algorithm, run_dir, device, dist)


def check_resumable(checkpoint: Checkpoint, cfg: Config, data: SSLData, run_dir: RunDir) -> None:
    """Refuse to continue ``checkpoint`` with another config, dataset or split (one line)."""
    where = run_dir.last
    if checkpoint.training is None:
        raise CheckpointError(f"{where} holds weights only; it cannot be resumed")
    changed = diff(checkpoint.config, cfg)
    if changed:
        raise CheckpointError(
            f"{where} was written with a different config ({'; '.join(changed[:4])}); resume "
            "with the original config, or start a new run (another train.run_name)"
        )
    if checkpoint.meta != RunMeta.of_data(data):
        raise CheckpointError(
            f"{where} was trained on other data ({checkpoint.meta.num_classes} classes of "
            f"{checkpoint.meta.image_shape}, mean {checkpoint.meta.mean}); the dataset has "
            "changed since: start a new run"
        )
    if run_dir.split.is_file():
        try:
            saved = parse_json(run_dir.split.read_text())
        except ValueError:
            saved = None
        keys = ["labeled", "val"] + (["pool_fingerprint"] if isinstance(saved, dict)
                                     and "pool_fingerprint" in saved else [])
        if not isinstance(saved, dict) or any(saved.get(k) != data.split.get(k) for k in keys):
            raise CheckpointError(
                f"{run_dir.split} does not match the split drawn now (the dataset files changed?)"
                "; resume would mix two splits: start a new run"
            )


def run(
    cfg: Config,
    resume: bool = False,
    stop_after: int | None = None,
    data: SSLData | None = None,
    overwrite: bool = False,
    init: Checkpoint | None = None,
) -> RunResult:
    """Train the run described by ``cfg`` in ``run_dir_for(cfg)``.

    ``resume`` continues from its ``checkpoints/last.pt``; ``overwrite`` starts over, removing
    every file of the run that was there (only once the new run is known to start); without
    either, a directory that holds a run is refused. ``stop_after`` trains up to that step (a
    checkpoint is written there), e.g. to train in chunks. ``init`` starts from another run's
    weights (the estimator's ``warm_start``). ``data`` replaces ``build_data(cfg.data)``.
    """
    if stop_after is not None and stop_after < 1:
        raise ConfigError(f"stop_after must be >= 1, got {stop_after}")
    dist = init_from_env(cfg.train.device)
    run_dir = RunDir(run_dir_for(cfg))
    owner = run_dir if dist.is_main else None
    busy: Exception | None = None
    if owner is not None:
        try:
            owner.acquire()
        except InterludeError as exc:
            busy, owner = exc, None
    try:
        if dist.any_rank(busy is not None, resolve_device(cfg.train.device, dist)):
            raise busy or InterludeError(f"rank 0 could not own {run_dir.path}")
        return _run_owned(cfg, run_dir, dist, resume, stop_after, data, overwrite, init)
    finally:
        if owner is not None:
            owner.release()


def _previous_run_weights(cfg: Config, data: SSLData) -> Checkpoint | None:
    """``model.pretrained`` naming an earlier interlude run (folder, checkpoint or export): its
    weights to start from, classifier included; None for timm's own weights or random init."""
    source = cfg.model.pretrained
    if not isinstance(source, str):
        return None
    weights = interlude_weights(source)
    if weights is None:
        if not type(cfg.model).has_pretrained_weights:
            raise ConfigError(
                f"model.pretrained={source} is not an interlude run, checkpoint or export; "
                f"model.arch={cfg.model.arch} starts only from those (or model.pretrained=false)")
        return None
    log.info("starting from the weights of %s", source)
    return Checkpoint(0, cfg, RunMeta.of_data(data), weights, weights)


def _run_owned(cfg: Config, run_dir: RunDir, dist: DistContext, resume: bool,
               stop_after: int | None, data: SSLData | None, overwrite: bool,
               init: Checkpoint | None) -> RunResult:
    checkpoint = None
    if resume and run_dir.last.is_file():
        checkpoint = Checkpoint.load(run_dir.last)
    if checkpoint is None and dist.is_main:
        run_dir.check_clearable()  # before the data is loaded: never empty a user's folder
    if checkpoint is None and resume:
        log.info("no checkpoint in %s: starting from scratch", run_dir.path)
    elif checkpoint is None and run_dir.holds_run() and not overwrite:
        raise ConfigError(
            f"{run_dir.path} already holds a run; pass --resume to continue it, --overwrite to "
            "start over, or set train.run_name"
        )
    cfg = resolve_inputs(cfg)
    data = data if data is not None else build_data(cfg.data)
    cfg = resolve_config(cfg, data)
    if checkpoint is not None:
        check_resumable(checkpoint, cfg, data, run_dir)
    if checkpoint is None and init is None:
        init = _previous_run_weights(cfg, data)
    trainer = _assemble(cfg, data, run_dir, dist,
                        pretrained=checkpoint is None and init is None)
    if checkpoint is not None:
        trainer.restore(checkpoint)
        log.info("resumed %s at step %d", run_dir.path, trainer.step)
    elif init is not None:
        trainer.init_weights(init)
    log.info("data: %d labeled, %d unlabeled, %d val, %d test images of shape %s",
             len(data.labeled), len(data.unlabeled), len(data.val) if data.val else 0,
             len(data.test) if data.test else 0, data.image_shape)
    if dist.is_main:
        if checkpoint is None:
            run_dir.clear()  # a fresh start keeps nothing of an old run (--overwrite)
        write_atomic(run_dir.config, cfg.to_yaml())
        write_atomic(run_dir.split, json.dumps(data.split))
    dist.barrier()
    summary = trainer.fit(stop_after=stop_after)
    dist.barrier()  # rank 0 has written summary.json before any rank returns
    if dist.is_main and not summary.get("interrupted", False):
        warn_signatures(run_dir.path, summary.get("primary_model"))
    return RunResult(run_dir.path, summary, trainer.checkpoint(False).weights_only(),
                     trainer.stop_signal)


def warn_signatures(run_dir: Path, model: str | None = None) -> None:
    """Log the failure signatures of a finished run (one warning line each), so the user reads
    them at the end of training and not only in ``interlude report``."""
    from interlude.experiments.signatures import run_dir_signatures

    for signature in run_dir_signatures(run_dir, model):
        log.warning("warning: %s [%s]", signature.message, signature.rule)
