"""The training loop: one :class:`Trainer` owns optimisation, evaluation, logging and checkpoints.

Data, model and algorithm are built outside and passed in, so each can be swapped or tested alone.
The hot path never synchronises with the host: per-step metrics are summed on the device and read
once per log interval, and a NaN loss is detected there too (never saved into a checkpoint).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from interlude.algorithms.base import Algorithm
from interlude.artifact import (
    Checkpoint,
    NonFiniteState,
    RunMeta,
    rng_state,
    set_rng_state,
    weights_problem,
    write_atomic,
)
from interlude.config import Config
from interlude.data.base import SSLData
from interlude.data.layout import build_layout
from interlude.data.sampler import StepSampler
from interlude.errors import CheckpointError, ConfigError, InterludeError, TrainingDiverged
from interlude.rundir import RunDir
from interlude.train.distributed import DistContext
from interlude.train.ema import ModelEMA, unwrap
from interlude.train.evaluate import evaluate_model
from interlude.train.forward import forward_views
from interlude.train.input_pipeline import BatchBuilder, Preprocess
from interlude.train.logger import Progress, RunLogger
from interlude.train.optim import build_optimizer, build_scheduler

log = logging.getLogger("interlude")

COUNTED_METRICS = frozenset({"pl_counts"})
"""Per-step metrics that are counts: logged summed over the log window and the ranks (as lists
of integers), where every other metric is logged as its mean over the window."""


class Trainer:
    def __init__(
        self,
        cfg: Config,
        data: SSLData,
        model: nn.Module,
        algorithm: Algorithm,
        run_dir: RunDir | Path,
        device: torch.device,
        dist: DistContext | None = None,
    ) -> None:
        """``model`` comes with its fusion fixed when it was built (``nets.build_net``)."""
        self.cfg = cfg
        self.data = data
        self.meta = RunMeta.of_data(data)
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.device = device
        self.dist = dist or DistContext()
        t = cfg.train
        if t.batch_size % self.dist.world_size:
            raise ConfigError(
                f"train.batch_size={t.batch_size} is the global labeled batch and must divide by "
                f"the {self.dist.world_size} processes; use a multiple of {self.dist.world_size}"
            )
        self.channels_last = t.channels_last and device.type == "cuda"
        self.autocast = t.precision == "bf16" and device.type == "cuda"
        if t.precision == "bf16" and device.type != "cuda":
            log.warning("train.precision=bf16 applies on CUDA only; this %s run uses fp32", device)
        model = model.to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.algorithm = algorithm.to(device)
        self.optimizer = build_optimizer(model, t)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.ema = ModelEMA(model, t.ema_decay) if t.ema_decay > 0 else None
        self.train_model = self.dist.wrap(model, t.sync_bn)
        if t.compile:
            mode = None if t.compile_mode == "default" else t.compile_mode
            self.train_model = torch.compile(self.train_model, mode=mode)
        if device.type == "cuda":  # every step has the same shapes: time cuDNN's algorithms once
            torch.backends.cudnn.benchmark = t.cudnn_benchmark
        local_batch = t.batch_size // self.dist.world_size
        mu = t.mu if algorithm.uses_unlabeled else 0
        self.layout = build_layout(algorithm.views, local_batch, mu, cfg.algorithm.layout)
        self.layout = self.layout.to(device)
        self.preprocess = Preprocess(data.mean, data.std, device, self.channels_last)
        self.sampler = StepSampler(len(data.labeled), len(data.unlabeled), t.batch_size, mu, t.seed)
        self.batches = BatchBuilder(
            data.labeled, data.unlabeled, self.sampler, self.layout.views, self.preprocess,
            data.hflip, t.seed, device, self.dist.rank, self.dist.world_size,
            augment_on=t.augment_on, num_workers=t.num_workers, total_steps=t.steps,
        )
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] = {}
        self.saved_step: int | None = None
        """Step of the last ``last.pt`` written (or resumed from): the last good checkpoint."""
        self.stop_signal: int | None = None
        self._stop_requested = False
        self._diverged = torch.zeros((), dtype=torch.bool, device=device)

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        batch = self.batches.build(step)
        self.train_model.train()
        with torch.autocast("cuda", torch.bfloat16) if self.autocast else nullcontext():
            logits = forward_views(self.train_model, batch.x, self.layout)
        loss, metrics = self.algorithm.loss(logits, batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self._diverged |= ~torch.isfinite(loss.detach())
        return metrics

    # ------------------------------------------------------------------ loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train until ``train.steps`` (or ``stop_after`` steps, to train in chunks)."""
        t = self.cfg.train
        end = t.steps if stop_after is None else min(t.steps, stop_after)
        main = self.dist.is_main
        logger = RunLogger(self.run_dir.path, t.tensorboard, resume_step=self.step) if main else None
        if logger is not None and self.step == 0:
            logger.write("data", 0, {"labeled_counts": self._labeled_counts()})
        progress = Progress(t.steps, self.step, t.progress and main)
        sums: dict[str, torch.Tensor] = {}
        window = _Window(self.step)
        try:
            with self._stop_on_signal():
                while self.step < end and not self._should_stop():
                    started = time.perf_counter()
                    metrics = self.train_step(self.step)
                    window.data_time += self.batches.last_build_seconds
                    for key, value in metrics.items():
                        sums[key] = sums[key] + value if key in sums else value.clone()
                    self.step += 1
                    window.images += self.layout.order.numel() * self.dist.world_size
                    window.step_time += time.perf_counter() - started
                    if self.step % t.log_interval == 0 or self.step == end:
                        self._log_train(sums, window, logger, progress)
                        sums, window = {}, _Window(self.step)
                    if self.step % t.eval_interval == 0 or self.step == t.steps:
                        self._evaluate(logger, progress)
                    if self.step % t.checkpoint_interval == 0 or self.step == end:
                        self.save_checkpoint()
            if self._stop_requested and self.step < end:  # (step == end saved above)
                self.save_checkpoint()
                progress.write(f"interrupted: checkpoint saved at step {self.step}; "
                               "continue with --resume")
            elif self._stop_requested:  # the signal came during the last step: it finished
                self.stop_signal = None
        except OSError as exc:  # e.g. the disk filled up while appending to the metrics
            raise InterludeError(
                f"could not write {exc.filename or 'a run file'} "
                f"({exc.strerror or type(exc).__name__}) at step {self.step}; training stopped "
                f"and {self._kept()}"
            ) from None
        finally:
            self.batches.close()
            progress.close()
            if logger is not None:
                logger.close()
        summary = self.summary(interrupted=self.step < t.steps)
        if main and self.step >= t.steps:
            write_atomic(self.run_dir.summary, json.dumps(summary, indent=1))
        return summary

    def _labeled_counts(self) -> list[int]:
        """Labeled images per class: the prior the pseudo-label histogram is compared with."""
        labels = np.asarray(self.data.labeled.labels)
        return np.bincount(labels[labels >= 0], minlength=self.data.num_classes).tolist()

    def _should_stop(self) -> bool:
        """Whether a stop was requested; under DDP all ranks agree, at log intervals only.

        A signal can reach the ranks at different steps, and a rank that stopped alone would
        deadlock the others; agreeing once per log interval keeps the hot path free of syncs.
        """
        if self.dist.enabled and self.step % self.cfg.train.log_interval == 0:
            self._stop_requested = self.dist.any_rank(self._stop_requested, self.device)
            return self._stop_requested
        return self._stop_requested and not self.dist.enabled

    def _log_train(self, sums, window, logger, progress) -> None:
        self._check_finite()
        steps = self.step - window.start
        values: dict[str, Any] = {}
        for key, value in self._reduce(sums).items():
            if key in COUNTED_METRICS:  # summed over the window and the ranks
                values[key] = [round(count) for count in (value * self.dist.world_size).tolist()]
            else:
                values[key] = float(value) / steps
        values["lr"] = self.scheduler.get_last_lr()[0]
        values["img_per_s"] = window.images / max(window.step_time, 1e-9)
        if window.data_time > 0:
            values["data_img_per_s"] = window.images / window.data_time
        if logger is not None:
            logger.write("train", self.step, values)
        progress.update(steps, values)

    def _reduce(self, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not sums:
            return {}
        keys = sorted(sums)
        flat = [sums[k].float().reshape(-1) for k in keys]  # scalars and per-class vectors
        reduced = self.dist.all_reduce_mean(torch.cat(flat)).cpu()
        return dict(zip(keys, reduced.split([part.numel() for part in flat]), strict=True))

    def _check_finite(self) -> None:
        diverged = bool(self.dist.all_reduce_max(self._diverged.float()).item())
        if diverged:
            raise TrainingDiverged(
                f"loss became NaN/inf before step {self.step}; training stopped and "
                f"{self._kept()}. Lower train.lr or check the data for NaN values"
            )

    def _kept(self) -> str:
        """What a stopped run leaves to continue from, for its error message."""
        if self.saved_step is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is {self.run_dir.last} (step {self.saved_step})"

    # ------------------------------------------------------------------ evaluation
    def eval_models(self) -> dict[str, nn.Module]:
        models = {"raw": self.model}
        if self.ema is not None:
            models["ema"] = self.ema.module
        return models

    def _evaluate(self, logger, progress) -> None:
        self._check_finite()
        record: dict[str, Any] = {}
        # the labeled images too: accuracy falling there while the unlabeled losses rise is the
        # over-regularisation signature `interlude report` looks for
        splits = {"val": self.data.val, "test": self.data.test, "labeled": self.data.labeled}
        for model in self.eval_models().values():
            self.dist.broadcast_buffers(model)  # every rank evaluates rank 0's BN statistics
        for split, images in splits.items():
            if images is None or len(images) == 0:
                continue
            for name, model in self.eval_models().items():
                metrics = evaluate_model(
                    model, images, self.preprocess, self.data.num_classes,
                    self.cfg.train.eval_batch_size, self.device, self.dist,
                )
                for key, value in metrics.items():
                    record[f"{split}/{name}/{key}"] = value
        record["step"] = self.step
        self.last_eval = record
        primary = self.primary_model
        if self.data.val is not None and self.cfg.train.select_on == "val":
            key = f"val/{primary}/top1"
            if self.best is None or record[key] > self.best[key]:
                self.best = dict(record)
                self._save_best()
        if logger is not None:
            logger.write("eval", self.step, _scalars(record))
        shown = ", ".join(
            f"{k}={v:.4f}" for k, v in _scalars(record).items() if k.endswith("/top1")
        )
        if shown:
            progress.write(f"step {self.step}: {shown}")

    @property
    def primary_model(self) -> str:
        return "ema" if self.ema is not None else "raw"

    def summary(self, interrupted: bool = False) -> dict[str, Any]:
        c = self.cfg
        return {
            "algorithm": c.algorithm.name,
            "dataset": c.data.name,
            "seed": c.train.seed,
            "data_seed": c.data.data_seed,
            "labels_per_class": c.data.labels_per_class,
            "steps": self.step,
            "primary_model": self.primary_model,
            "selected_by": "val" if self.best is not None else "last",
            "interrupted": interrupted,
            "last": self.last_eval,
            "best": self.best,
        }

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, with_training_state: bool = True) -> Checkpoint:
        """The current state as a :class:`Checkpoint` (tensors not copied)."""
        training = None
        if with_training_state:
            training = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "algorithm": self.algorithm.state_dict(),
                "rng": rng_state(),
            }
        return Checkpoint(
            step=self.step, config=self.cfg, meta=self.meta,
            model=unwrap(self.model).state_dict(),
            ema=self.ema.state_dict() if self.ema is not None else None,
            training=training, best=self.best, last_eval=self.last_eval,
            execution=self.execution(),
        )

    def execution(self) -> dict[str, Any]:
        """What floating-point rounding depends on besides the config: the device type, the CPU
        threads actually used (``train.threads=0`` is the machine's core count) and the number
        of processes."""
        return {"device": self.device.type, "threads": torch.get_num_threads(),
                "processes": self.dist.world_size}

    def _warn_if_not_bit_exact(self, checkpoint: Checkpoint) -> None:
        then, now = checkpoint.execution or {}, self.execution()
        changed = [f"{key} {then[key]} -> {value}" for key, value in now.items()
                   if key in then and then[key] != value]
        if changed:
            log.warning("resumed with other %s than step %d was trained with (%s): the run "
                        "continues, but it is no longer bit-exact with an uninterrupted one",
                        "/".join(k.split()[0] for k in changed), checkpoint.step,
                        ", ".join(changed))

    def save_checkpoint(self) -> None:
        """Write ``last.pt``; a state with NaN/inf anywhere stops training and is not written."""
        self._check_finite()
        self._save(self.checkpoint(), self.run_dir.last)
        self.saved_step = self.step

    def _save_best(self) -> None:
        self._save(self.checkpoint(with_training_state=False), self.run_dir.best)

    def _save(self, checkpoint: Checkpoint, path: Path) -> None:
        """Rank 0 writes; every rank learns whether the state was finite and stops together."""
        problem = ""
        if self.dist.is_main:
            try:
                checkpoint.save(path)
            except NonFiniteState as exc:
                problem = str(exc)
        if self.dist.any_rank(bool(problem), self.device):
            raise TrainingDiverged(
                f"{problem or 'non-finite values on rank 0'}: training stopped and {self._kept()}."
                " Lower train.lr or check the data for NaN values"
            )
        self.dist.barrier()

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue exactly where ``checkpoint`` (a ``last.pt``, already checked) was taken."""
        if checkpoint.training is None:
            raise CheckpointError("this checkpoint holds weights only (best.pt?); resume from "
                                  "last.pt")
        state = checkpoint.training
        problem = weights_problem(checkpoint.model, unwrap(self.model).state_dict())
        if problem is not None:
            raise CheckpointError(f"the checkpoint does not match this model: {problem}")
        try:
            unwrap(self.model).load_state_dict(checkpoint.model)
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint.ema)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.algorithm.load_state_dict(state["algorithm"])
            set_rng_state(state["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"the checkpoint does not match this model/algorithm: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from None
        self._warn_if_not_bit_exact(checkpoint)
        self.step = self.saved_step = checkpoint.step
        self.best = checkpoint.best
        self.last_eval = checkpoint.last_eval

    def init_weights(self, checkpoint: Checkpoint) -> None:
        """Start from another run's weights (raw and EMA) with a fresh optimiser and schedule."""
        try:
            unwrap(self.model).load_state_dict(checkpoint.model)
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint.ema or checkpoint.model)
        except RuntimeError:
            raise ConfigError(
                "the starting weights describe another network (arch/width/classes changed); "
                "start from scratch instead"
            ) from None

    # ------------------------------------------------------------------ interruption
    @contextmanager
    def _stop_on_signal(self):
        """Ctrl-C, SIGTERM and SIGHUP (a closed terminal or SSH session) finish the current
        step, save a checkpoint and stop cleanly (exit 128 + the signal's number).

        A second Ctrl-C gives up at once (the user does not want to wait); a second SIGTERM or
        SIGHUP does not: schedulers send SIGTERM to every process, so a child can get it twice.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._stop_requested and signum == signal.SIGINT:  # second Ctrl-C: give up now
                raise KeyboardInterrupt
            if self._stop_requested:  # a repeated SIGTERM (Slurm signals every process of a
                return  # job, and the sweep task forwards one too): still save the checkpoint
            self._stop_requested = True
            self.stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
"""Signals that stop training with a checkpoint (SIGHUP does not exist on Windows)."""


class _Window:
    """Counters of one log interval."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.images = 0
        self.step_time = 0.0
        self.data_time = 0.0


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {
        k: v for k, v in record.items()
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
    }
