"""Typed configuration: dataclasses, YAML files and ``key=value`` overrides.

A run is fully described by one :class:`Config`. It is built from a YAML file (optional) plus
overrides such as ``train.steps=500`` or ``algorithm.name=fixmatch``; a bare key (``steps=500``) is
accepted when it names exactly one field. Unknown keys and values of the wrong type are rejected
with a :class:`~interlude.errors.ConfigError` that lists the valid keys, because a silently ignored
typo in an ML config costs a whole training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from interlude.errors import ConfigError


@dataclass
class DataConfig:
    """Which images to use and how the labeled split is drawn."""

    name: str = "digits"
    """Dataset: digits, mnist5k, cifar10, cifar100, stl10, svhn, imagefolder, tmed2."""
    data_dir: str = "data"
    """Folder holding the dataset files (standard benchmarks)."""
    download: bool = False
    """Download standard datasets with torchvision when they are missing (needs the `vision` extra)."""
    labels_per_class: int = 4
    """Labeled images per class drawn from the training pool (class-balanced)."""
    data_seed: int = 0
    """Seed of the labeled/unlabeled/validation split; independent of `train.seed`."""
    val_per_class: int = 0
    """Images per class held out of the training pool as a validation set (0 = none)."""
    split_file: str | None = None
    """Reuse the split saved by an earlier run (its `split.json`) instead of drawing one."""
    resolution: int | None = None
    """Square image size fed to the network; None = native size (imagefolder 32, tmed2 112)."""
    hflip: bool | None = None
    """Random horizontal flip in the weak view; None uses the dataset default (off for digits)."""
    labeled_dir: str | None = None
    """imagefolder: folder of `<class>/<image>` labeled images."""
    unlabeled_dir: str | None = None
    """imagefolder: folder of unlabeled images (any nesting)."""
    val_dir: str | None = None
    """imagefolder: optional labeled validation folder."""
    test_dir: str | None = None
    """imagefolder: optional labeled test folder."""
    grayscale: bool | None = None
    """imagefolder: force 1-channel (True) or 3-channel (False) images; None infers from the files."""
    labeled_classes: list[int] | None = None
    """Open-set: classes kept for the labeled/test sets (None = all classes)."""
    outlier_ratio: float = 0.0
    """Open-set: fraction of the unlabeled pool drawn from classes outside `labeled_classes`."""
    class_weighted_loss: bool = False
    """Weight the supervised CE by the normalised inverse labeled class frequency (TMED style)."""
    use_unlabeled_extra: bool = True
    """STL-10: include the 100k `unlabeled` split in the unlabeled pool."""


@dataclass
class ModelConfig:
    """Backbone network."""

    arch: str = "auto"
    """small_cnn, wrn28_2, wrn28_8, wrn37_2, vit_tiny|small|base; auto picks by dataset."""
    fusion_layer: int = -1
    """Index of the residual group *before* which embeddings are fused; -1 = before the last group."""
    width: int = 32
    """small_cnn: channels of the first conv block."""
    pretrained: str | None = None
    """Local weights file (timm-named state dict, .pt or .safetensors) for a ViT; never downloaded."""


@dataclass
class AlgorithmConfig:
    """Semi-supervised algorithm and its loss weights."""

    name: str = "interlude"
    """supervised, fixmatch, interlude, freematch, flexmatch, interlude_plus."""
    lambda_u: float = 1.0
    """Weight of the unlabeled (pseudo-label) loss."""
    threshold: float = 0.95
    """FixMatch confidence threshold tau."""
    temperature: float = 1.0
    """Softmax temperature for pseudo-labels."""
    lambda_dc: float = 1.0
    """Weight of the delta-consistency loss (0 = off)."""
    dc_variant: Literal["avg", "cd", "cd_authors"] = "avg"
    """DC loss: `avg` over all paired unlabeled; `cd` only over those whose pseudo-label equals the
    label (per-row mask); `cd_authors` reproduces the authors' scalar-scaled cd."""
    fusion_strength: float = 0.1
    """Embedding fusion alpha (0 = off)."""
    fusion_at_eval: bool = False
    """Reproduce the authors' code, which also fuses at evaluation (predictions then depend on batch)."""
    layout: Literal["interdigitated", "blocked"] = "interdigitated"
    """Batch order: per labeled item [lw, its uw, ls, its us], or all labeled then all unlabeled."""
    ema_p: float = 0.999
    """FreeMatch/InterLUDE+: decay of the self-adaptive threshold statistics."""
    lambda_ent: float = 0.05
    """FreeMatch/InterLUDE+: weight of the self-adaptive fairness term."""
    flex_warmup: bool = True
    """FlexMatch: threshold warm-up (count unused samples as a class)."""


@dataclass
class TrainConfig:
    """Optimisation, schedule, evaluation and bookkeeping."""

    steps: int = 2000
    """Total optimisation steps (the cosine schedule spans exactly these)."""
    batch_size: int = 16
    """Labeled images per step (global batch across all ranks)."""
    mu: int = 7
    """Unlabeled images per labeled image."""
    lr: float = 0.03
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    """Applied to conv/linear weights only, never to BatchNorm parameters or biases."""
    cosine_cycles: float = 7.0 / 16.0
    """LR factor is cos(pi * cosine_cycles * step / steps), floored at 0."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    layer_decay: float = 1.0
    """AdamW/ViT: layer-wise lr decay factor (1 = off)."""
    ema_decay: float = 0.999
    """EMA of the weights used for evaluation (0 = evaluate the raw model only)."""
    seed: int = 0
    """Training seed: initialisation, sampling and augmentation; independent of `data.data_seed`."""
    eval_interval: int = 500
    log_interval: int = 50
    checkpoint_interval: int = 500
    eval_batch_size: int = 256
    device: str = "auto"
    """auto, cpu, cuda, cuda:1 ..."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast (CUDA); fp32 everywhere else."""
    channels_last: bool = True
    """Use channels_last memory format on CUDA (ignored on CPU)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    augment_on: Literal["device", "workers"] = "device"
    """Batched augmentation on the training device, or per-image in DataLoader workers."""
    num_workers: int = 2
    """DataLoader workers when `augment_on: workers`."""
    out_dir: str = "runs"
    run_name: str | None = None
    """Run folder name under `out_dir`; default `<dataset>-<algorithm>-s<seed>`."""
    tensorboard: bool = False
    progress: bool = True
    """Show a progress bar."""
    select_on: Literal["val", "last"] = "val"
    """Best checkpoint chosen on the validation set when there is one; never on test."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm under DDP."""
    threads: int = 0
    """torch CPU threads (0 = torch default)."""


@dataclass
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "algorithm": AlgorithmConfig,
    "train": TrainConfig,
}


def valid_keys() -> list[str]:
    """All dotted keys a config accepts, e.g. ``train.steps``."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def field_docs() -> dict[str, tuple[str, Any, str]]:
    """Map dotted key -> (type name, default, one-line description), read from the source."""
    import ast
    import inspect

    docs: dict[str, tuple[str, Any, str]] = {}
    for section, cls in SECTIONS.items():
        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body  # type: ignore[attr-defined]
        descriptions: dict[str, str] = {}
        for prev, node in zip(body, body[1:], strict=False):
            if (
                isinstance(prev, ast.AnnAssign)
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(prev.target, ast.Name)
            ):
                descriptions[prev.target.id] = str(node.value.value)
        hints = typing.get_type_hints(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            docs[f"{section}.{f.name}"] = (
                _type_name(hints[f.name]),
                getattr(defaults, f.name),
                descriptions.get(f.name, ""),
            )
    return docs


def config_reference_markdown() -> str:
    """The config reference table embedded in the README (kept in sync by a test)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, (tp, default, doc) in field_docs().items():
        text = " ".join(doc.split()).replace("|", "\\|")
        type_text = tp.replace("|", " \\| ")
        rows.append(f"| `{key}` | {type_text} | `{default!r}` | {text} |")
    return "\n".join(rows)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list[{_type_name(get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise ConfigError."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, item_tp) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    as_float = float(value)
                except ValueError:
                    as_float = None
                if as_float is not None and as_float.is_integer():
                    return int(as_float)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _resolve_key(key: str) -> tuple[str, str]:
    """Map ``section.field`` or an unambiguous bare ``field`` to (section, field)."""
    if "." in key:
        section, _, name = key.partition(".")
        cls = SECTIONS.get(section)
        if cls is not None and name in {f.name for f in dataclasses.fields(cls)}:
            return section, name
    else:
        owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) == 1:
            return owners[0], key
        if len(owners) > 1:
            raise ConfigError(
                f"ambiguous key '{key}': write one of {', '.join(f'{s}.{key}' for s in owners)}"
            )
    close = difflib.get_close_matches(key, valid_keys(), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown config key '{key}'.{hint} Valid keys: {', '.join(valid_keys())}"
    )


def _set(cfg: Config, key: str, value: Any) -> None:
    section, name = _resolve_key(key)
    sub = getattr(cfg, section)
    tp = typing.get_type_hints(type(sub))[name]
    setattr(sub, name, _coerce(f"{section}.{name}", value, tp))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix and key in SECTIONS:
            flat.update(_flatten(value, f"{dotted}."))
        elif isinstance(value, dict) and not prefix:
            raise ConfigError(
                f"unknown config section '{key}'. Sections are: {', '.join(SECTIONS)}"
            )
        else:
            flat[dotted] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is parsed as YAML so ``1e-3``, ``true``, ``[1,2]`` work."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (e.g. train.steps=500)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)
    return key.strip(), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in ".e")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config` from an optional YAML file and overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must contain a mapping of sections (data, model, ...)")
        for key, value in _flatten(tree).items():
            _set(cfg, key, value)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config saved with :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    cfg = Config()
    for key, value in _flatten(tree).items():
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a type annotation cannot express."""
    t, a, d = cfg.train, cfg.algorithm, cfg.data
    positive = {
        "train.steps": t.steps,
        "train.batch_size": t.batch_size,
        "train.eval_interval": t.eval_interval,
        "train.log_interval": t.log_interval,
        "train.checkpoint_interval": t.checkpoint_interval,
        "train.eval_batch_size": t.eval_batch_size,
        "data.labels_per_class": d.labels_per_class,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    if t.mu < 1 and a.name != "supervised":
        raise ConfigError(f"train.mu must be >= 1 for {a.name}, got {t.mu}")
    if not 0.0 <= a.fusion_strength < 1.0:
        raise ConfigError(f"algorithm.fusion_strength must be in [0, 1), got {a.fusion_strength}")
    if not 0.0 <= a.ema_p < 1.0:
        raise ConfigError(f"algorithm.ema_p must be in [0, 1), got {a.ema_p}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0.0 < a.threshold <= 1.0:
        raise ConfigError(f"algorithm.threshold must be in (0, 1], got {a.threshold}")
    if a.temperature <= 0:
        raise ConfigError(f"algorithm.temperature must be positive, got {a.temperature}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    if not 0.0 <= d.outlier_ratio < 1.0:
        raise ConfigError(f"data.outlier_ratio must be in [0, 1), got {d.outlier_ratio}")
    if d.val_per_class < 0:
        raise ConfigError(f"data.val_per_class must be >= 0, got {d.val_per_class}")
    if d.resolution is not None and d.resolution < 4:
        raise ConfigError(f"data.resolution must be at least 4 pixels, got {d.resolution}")
