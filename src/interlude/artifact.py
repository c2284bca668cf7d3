"""The run artifact contract: what a checkpoint holds, how it is written and read, and the one
place where a network is rebuilt from saved metadata.

Every reader (resume, ``interlude eval``/``predict``/``export``, the estimator, ``interlude.load``)
goes through :class:`Checkpoint` and :func:`build_inference_net`, so a file is validated once, the
same way, and a model for inference is always built the same way: embedding fusion off, eval mode.

Writing is atomic (:func:`interlude.files.write_atomic`: temporary file in the same folder,
fsync, ``os.replace``): a kill or a full disk leaves the previous file, never half of a new one. A
checkpoint holds only tensors, numbers, strings, lists and dicts, loads with
``torch.load(weights_only=True)`` and is refused before it is written if any tensor in it is NaN
or infinite, so "the last good checkpoint" is good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interlude.config import Config, ModelConfig, config_from_dict
from interlude.errors import (
    CheckpointError,
    ConfigError,
    InterludeError,
    TrainingDiverged,
    shown,
)
from interlude.files import TMP_SUFFIX, WriteError, remove_orphan_temporaries, write_atomic

__all__ = ["TMP_SUFFIX", "Checkpoint", "NonFiniteState", "RunMeta", "WriteError",
           "build_inference_net", "non_finite_entries", "remove_orphan_temporaries",
           "write_atomic"]

FORMAT_VERSION = 2
"""Layout of a checkpoint file; files of another version are refused (retrain, or use the
interlude version that wrote them)."""
_TRAINING_KEYS = ("optimizer", "scheduler", "algorithm", "rng")


class NonFiniteState(TrainingDiverged):
    """A checkpoint would hold NaN/inf values; it was not written."""


# ----------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class RunMeta:
    """What a trained network needs besides its weights: classes and input preprocessing."""

    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    """Resize filter of the training images (``data.interpolation``): new images are resized the
    same way."""

    @classmethod
    def of_data(cls, data: Any) -> RunMeta:
        """The metadata of an :class:`~interlude.data.SSLData`."""
        return cls.from_dict({
            "num_classes": data.num_classes, "class_names": list(data.class_names),
            "image_shape": list(data.image_shape), "mean": list(data.mean), "std": list(data.std),
            "interpolation": data.interpolation,
        }, "the dataset")

    def to_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "class_names": list(self.class_names),
                "image_shape": list(self.image_shape), "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> RunMeta:
        """Validate ``raw`` as hostile input; every problem is one line naming ``source``."""

        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"{source}: {what}; it was not written by interlude or is "
                                   "damaged: re-export or retrain")

        if not isinstance(raw, dict):
            raise bad("the metadata is not a mapping")
        num_classes = raw.get("num_classes")
        if not _is_int(num_classes) or not 2 <= num_classes <= 1_000_000:
            raise bad(f"num_classes must be an integer >= 2, got {shown(num_classes)}")
        names = raw.get("class_names")
        if not isinstance(names, (list, tuple)) or len(names) != num_classes or not all(
            isinstance(n, (str, int)) and not isinstance(n, bool) for n in names
        ):
            raise bad(f"class_names must list {num_classes} names (one per output)")
        if len({str(n) for n in names}) != len(names):
            raise bad("class_names holds the same name twice")
        shape = raw.get("image_shape")
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(map(_is_int, shape))
                and shape[0] in (1, 3) and min(shape[1:]) >= 4 and max(shape[1:]) <= 8192):
            raise bad(f"image_shape must be [channels 1|3, height, width >= 4], got {shown(shape)}")
        channels = int(shape[0])
        stats = {}
        for key in ("mean", "std"):
            values = raw.get(key)
            if not (isinstance(values, (list, tuple)) and len(values) == channels and all(
                _is_number(v) and math.isfinite(v) for v in values
            )):
                raise bad(f"{key} must hold {channels} finite number(s), got {shown(values)}")
            stats[key] = tuple(float(v) for v in values)
        if min(stats["std"]) <= 0:
            raise bad(f"std must be positive, got {list(stats['std'])}")
        interpolation = raw.get("interpolation")
        if interpolation not in ("bilinear", "bicubic"):
            raise bad(f"interpolation must be bilinear or bicubic, got {shown(interpolation)}")
        return cls(int(num_classes), tuple(str(n) for n in names),
                   (channels, int(shape[1]), int(shape[2])), stats["mean"], stats["std"],
                   interpolation)


def _execution(raw: Any) -> dict[str, Any] | None:
    """The ``execution`` record of a checkpoint, or None when absent or not well formed (it only
    decides a warning, so a damaged one is dropped rather than refused)."""
    if not isinstance(raw, dict):
        return None
    kept = {k: v for k, v in raw.items() if isinstance(k, str) and (
        _is_int(v) or (isinstance(v, str) and len(v) <= 64))}
    return kept or None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- the network
def build_inference_net(model_cfg: ModelConfig, meta: RunMeta,
                        weights: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The one place a network is rebuilt from saved metadata: eval mode, fusion off.

    ``model_cfg.arch`` must be resolved (never ``auto``); the saved weights hold every
    parameter, so ``model.pretrained`` is ignored. The network is first laid out on the ``meta``
    device (no memory) and the weights checked against it (:func:`weights_problem`: names,
    shapes, dtypes, finite values), so a crafted config (``width`` 10**6) allocates nothing and
    damaged weights never predict.
    """
    from interlude.nets import build_net

    cfg = model_cfg.model_copy(update={"pretrained": False})
    channels, height, _ = meta.image_shape

    def network() -> nn.Module:
        return build_net(cfg, meta.num_classes, channels, height)

    try:
        with torch.device("meta"):
            expected = network().state_dict()
    except InterludeError:
        raise
    except Exception as exc:  # a config no network can be built from
        raise CheckpointError(f"{source}: no {cfg.arch} network can be built from its config "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    problem = weights_problem(weights, expected)
    if problem is not None:
        raise CheckpointError(f"{source}: its weights do not match a {cfg.arch} network for "
                              f"{meta.num_classes} classes ({problem}); re-export or retrain")
    model = network()
    model.load_state_dict(weights)
    return model.eval()


def weights_problem(weights: dict[str, Any], expected: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with ``weights`` for a network whose state dict is ``expected`` (a missing,
    extra, misshapen or wrongly typed tensor, NaN/inf), or None. The checks saving applies
    (finite values), plus those a cast would hide: an integer tensor for a float parameter
    would load silently as whole numbers."""
    missing = [k for k in expected if k not in weights]
    if missing:
        return f"{len(missing)} tensor(s) missing, e.g. {shown(missing[0])}"
    extra = [k for k in weights if k not in expected]
    if extra:
        return f"{len(extra)} unexpected tensor(s), e.g. {shown(extra[0])}"
    for key, want in expected.items():
        have = weights[key]
        if not isinstance(have, torch.Tensor):
            return f"{shown(key)} is not a tensor"
        if tuple(have.shape) != tuple(want.shape):
            return f"{key} has shape {tuple(have.shape)}, the network needs {tuple(want.shape)}"
        if have.is_floating_point() != want.is_floating_point() or have.is_complex():
            return f"{key} is {str(have.dtype).removeprefix('torch.')}, the network needs " \
                   f"{str(want.dtype).removeprefix('torch.')}"
    bad = non_finite_entries(weights)
    if bad:
        return f"NaN/inf in {len(bad)} tensor(s), e.g. {bad[0]}"
    return None


def _first_line(exc: BaseException) -> str:
    return shown(str(exc).splitlines()[0] if str(exc) else "", 160)


# ----------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """A checkpoint: weights + config + metadata, and for ``last.pt`` the training state.

    ``training`` (optimizer, scheduler, algorithm buffers, RNG) is present only in a checkpoint
    a run can resume from; ``best.pt`` and the estimator's in-memory copy hold weights only.
    """

    step: int
    config: Config
    meta: RunMeta
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    training: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] | None = None
    """What the rounding depended on when this was written (device type, CPU threads, processes):
    a resume under other values is not bit-exact, and says so. None in a weights-only copy."""

    @property
    def primary(self) -> str:
        """``'ema'`` when the checkpoint has EMA weights (what evaluation reports), else ``'raw'``."""
        return "ema" if self.ema is not None else "raw"

    def weights(self, which: str | None = None) -> dict[str, torch.Tensor]:
        which = which or self.primary
        if which not in ("ema", "raw"):
            raise CheckpointError(f"unknown weights '{which}': use 'ema' or 'raw'")
        weights = self.ema if which == "ema" else self.model
        if weights is None:
            raise CheckpointError(
                "this checkpoint has no EMA weights (trained with train.ema_decay=0); use "
                "--model raw"
            )
        return weights

    def build_model(self, which: str | None = None, source: str = "checkpoint") -> nn.Module:
        """The network with the ``ema`` or ``raw`` weights (default: the primary), for inference."""
        return build_inference_net(self.config.model, self.meta, self.weights(which), source)

    def weights_only(self) -> Checkpoint:
        """A CPU copy without training state (what ``best.pt`` and the estimator keep)."""

        def cpu(state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            if state is None:
                return None
            return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

        return Checkpoint(self.step, self.config, self.meta, cpu(self.model) or {}, cpu(self.ema),
                          None, self.best, dict(self.last_eval))

    # ------------------------------------------------------------------ dict form
    def to_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "step": self.step, "config": self.config.to_dict(),
            "meta": self.meta.to_dict(), "model": self.model, "ema": self.ema,
            "best": self.best, "last_eval": self.last_eval,
        }
        if self.training is not None:
            state.update(self.training)
        if self.execution is not None:
            state["execution"] = self.execution
        return state

    @classmethod
    def from_dict(cls, state: Any, source: str) -> Checkpoint:
        if not isinstance(state, dict) or "format_version" not in state:
            raise CheckpointError(f"{source} is not an interlude checkpoint (no format_version)")
        version = state["format_version"]
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} is an interlude checkpoint of format {shown(version)}; this interlude "
                f"reads format {FORMAT_VERSION}: retrain, or use the interlude version that "
                "wrote it")
        missing = [k for k in ("step", "config", "meta", "model") if k not in state]
        if missing:
            raise CheckpointError(f"{source} lacks {', '.join(missing)}: it is damaged")
        if not _is_int(state["step"]) or state["step"] < 0:
            raise CheckpointError(f"{source}: step must be a non-negative integer")
        try:
            config = config_from_dict(state["config"])
        except InterludeError as exc:
            raise CheckpointError(f"{source} holds an invalid config: {exc}") from None
        for key in ("model", "ema"):
            weights = state.get(key)
            if weights is not None and not (isinstance(weights, dict) and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
            )):
                raise CheckpointError(f"{source}: '{key}' is not a state dict of tensors")
        bad = non_finite_entries({"model": state["model"], "ema": state.get("ema")})
        if bad:  # what saving refuses, loading refuses too: such weights predict one class
            raise CheckpointError(f"{source}: NaN/inf in {len(bad)} tensor(s), e.g. {bad[0]}; it "
                                  "is damaged: use another checkpoint or retrain")
        meta = RunMeta.from_dict(state["meta"], source)
        if config.model.arch == "auto":  # training saves the resolved network, never "auto"
            raise CheckpointError(f"{source} does not name its network (model.arch=auto); it "
                                  "was not written by this interlude: retrain")
        has_training = all(k in state for k in _TRAINING_KEYS)
        return cls(
            step=int(state["step"]), config=config, meta=meta, model=state["model"],
            ema=state.get("ema"),
            training={k: state[k] for k in _TRAINING_KEYS} if has_training else None,
            best=state.get("best"), last_eval=state.get("last_eval") or {},
            execution=_execution(state.get("execution")),
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write atomically, after checking every tensor is finite (else :class:`NonFiniteState`)."""
        state = self.to_dict()
        bad = non_finite_entries(state)
        if bad:
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise NonFiniteState(
                f"step {self.step}: NaN/inf in {', '.join(bad[:3])}{more}; {Path(path).name} was "
                "not written"
            )
        write_atomic(path, lambda handle: torch.save(state, handle))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Load with ``weights_only=True`` (no code runs) and validate; one-line errors."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises many types for truncated/corrupt/unsafe files
            raise CheckpointError(
                f"checkpoint {path} is corrupt or not an interlude checkpoint "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                "delete it to start over, or use another run"
            ) from None
        return cls.from_dict(state, str(path))


def non_finite_entries(tree: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a nested dict/list holding NaN or inf.

    The per-tensor flags are stacked per device and read once, so this costs one host
    synchronisation per device however many tensors there are.
    """
    tensors: list[tuple[str, torch.Tensor]] = []
    _collect_float_tensors(tree, prefix, tensors)
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, tensor) in enumerate(tensors):
        by_device.setdefault(tensor.device, []).append(i)
    bad: set[int] = set()
    for rows in by_device.values():
        flags = torch.stack([torch.isfinite(tensors[i][1]).all() for i in rows]).tolist()
        bad.update(i for i, ok in zip(rows, flags, strict=True) if not ok)
    return [tensors[i][0] for i in sorted(bad)]


def _collect_float_tensors(tree: Any, prefix: str, out: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point():
            out.append((prefix or "<tensor>", tree.detach()))
    elif isinstance(tree, dict):
        for key, value in tree.items():
            _collect_float_tensors(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _collect_float_tensors(value, f"{prefix}.{i}" if prefix else str(i), out)


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global generators; CUDA devices are matched by index.

    A checkpoint written on a machine with N GPUs holds N CUDA states: resumed where fewer GPUs
    are visible, the states of the missing devices are dropped (they drove no rank here), and
    devices beyond those saved keep their own state.
    """
    if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor) or (
            not isinstance(state.get("cuda", []), (list, tuple))):
        raise TypeError("rng state: expected {'torch': tensor, 'cuda': [tensor, ...]}")
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


# ----------------------------------------------------------------------------- starting weights
def interlude_weights(source: str | Path) -> dict[str, torch.Tensor] | None:
    """The weights of an earlier interlude run that ``model.pretrained=source`` names, or None
    when ``source`` is not an interlude artifact (a timm backbone's own weights file).

    Accepted: a run directory (its ``checkpoints/last.pt``), a checkpoint file, an export folder
    or its ``model.safetensors`` (an ``interlude.json`` beside it). A checkpoint gives its primary
    weights (EMA when present), as evaluation and export do. Every weight, the classifier
    included, is loaded into the new network, so "suggest -> label -> train" continues the model
    rather than restarting it.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "checkpoints" / "last.pt").is_file():
            return Checkpoint.load(path / "checkpoints" / "last.pt").weights()
        if (path / "interlude.json").is_file() and (path / "model.safetensors").is_file():
            path = path / "model.safetensors"
        else:
            raise ConfigError(
                f"model.pretrained={path} is a folder but neither a run directory "
                "(checkpoints/last.pt) nor a safetensors export (interlude.json, "
                "model.safetensors); name a run, a checkpoint or an exported model file")
    if not path.is_file():
        raise ConfigError(f"model.pretrained file not found: {path} (a run directory, its "
                              "checkpoints/last.pt, or an exported model.safetensors)")
    if path.suffix == ".safetensors":
        if not (path.parent / "interlude.json").is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            weights = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"model.pretrained={path} is not a readable safetensors file "
                                  f"({_first_line(exc)}); export the run again") from None
        bad = non_finite_entries(weights)
        if bad:
            raise CheckpointError(f"model.pretrained={path} holds NaN/inf in {', '.join(bad[:3])}"
                                  "; export the run again")
        return weights
    if path.suffix in (".pt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a weights-only torch file: the timm loader reports it
            return None
        if isinstance(state, dict) and "format_version" in state:
            return Checkpoint.from_dict(state, str(path)).weights()
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
