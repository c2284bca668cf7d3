"""Typed configuration: dataclasses, YAML files and ``key=value`` overrides.

A run is fully described by one :class:`Config`. It is built from a YAML file (optional) plus
overrides such as ``train.steps=500`` or ``algorithm.name=fixmatch``; a bare key (``steps=500``) is
accepted when it names exactly one field. Unknown keys and values of the wrong type are rejected
with a :class:`~interlude.errors.ConfigError` that lists the valid keys, because a silently ignored
typo in an ML config costs a whole training run.

The schema lives in the dataclass fields: :func:`setting` attaches each key's valid range
(numbers), its choices or format (strings) and whether it is *bookkeeping* (changes where or how a
run executes, not what it computes). :func:`validate` checks every key against it, so an
out-of-range value fails with one line naming the key, the value and the valid range.
:data:`ALGORITHM_DEFAULTS` holds the keys whose default depends on ``algorithm.name``, and
:func:`diff` compares two configs key by key (resume, sweeps and reports use it).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from interlude.errors import ConfigError, shown

SEED_MAX = 2**63 - 1
"""Largest seed: torch and numpy generators take 64-bit seeds."""

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = GPU index) or mps"


@dataclass(frozen=True)
class Range:
    """Valid interval of a numeric key; ``None`` leaves that side open. Floats must be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        """``> 0``, ``>= 1``, ``[0, 1)``, ``(0, 1]`` ..."""
        low = (f"[{_number_text(self.ge)}" if self.ge is not None
               else f"({_number_text(self.gt)}" if self.gt is not None else None)
        high = (f"{_number_text(self.le)}]" if self.le is not None
                else f"{_number_text(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"{low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return "any"

    def phrase(self) -> str:
        """``> 0`` or ``in [0, 1)``: what follows "must be a number" in an error message."""
        text = str(self)
        return f"in {text}" if text[0] in "[(" else text


def _number_text(value: float) -> str:
    if isinstance(value, int) and value >= 2**31 and (value + 1) & value == 0:
        return f"2**{(value + 1).bit_length() - 1}-1"  # 2**63-1 rather than 19 digits
    return str(int(value)) if float(value).is_integer() else repr(value)


def setting(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    bookkeeping: bool = False,
    rounding: bool = False,
    choices: tuple[str, ...] | None = None,
    pattern: tuple[re.Pattern[str], str] | None = None,
) -> Any:
    """A config field carrying its schema in ``dataclasses.field(metadata=...)``.

    ``ge``/``gt``/``le``/``lt``: valid range of a number (of every item of a ``list[int]``; None is
    always accepted where the type allows it). ``bookkeeping``: the key does not change the
    result (logging, intervals, paths; a test resumes under each changed value and compares the
    weights bit for bit), so a resumed run, a sweep or a report may ignore it. ``rounding``: the
    key changes only floating-point rounding (device, threads): the same experiment, not the same
    bits, so a sweep or a report ignores it and a resume under another value warns that it is no
    longer bit-exact. ``choices``: the strings accepted. ``pattern``: ``(regex, description)`` a
    string must match as a whole. Write the key's description as a docstring on the line below (see
    :func:`field_docs`).
    """
    bounds = None
    if any(b is not None for b in (ge, gt, le, lt)):
        bounds = Range(ge, gt, le, lt)
    metadata = {"range": bounds, "bookkeeping": bookkeeping, "rounding": rounding,
                "choices": choices, "pattern": pattern}
    return field(default=default, metadata=metadata)


# Keys whose default depends on algorithm.name; "*" applies to every algorithm not listed. Their
# field default is None ("per algorithm"), resolved when a config is built (load_config,
# config_from_dict, AlgorithmConfig(...)), so a saved config.yaml holds the concrete value.
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "*": {"lambda_ent": 0.05},  # unused by algorithms without a fairness term
    "freematch": {"lambda_ent": 0.001},  # USB's FreeMatch configs
    "interlude_plus": {"lambda_ent": 0.05},  # InterLUDE+ (Huang et al.)
}

ALGORITHM_NAMES = ("supervised", "fixmatch", "interlude", "freematch", "flexmatch",
                   "interlude_plus")


def algorithm_default(algorithm: str, name: str) -> Any:
    """Default of the per-algorithm key ``algorithm.<name>`` for ``algorithm``."""
    return ALGORITHM_DEFAULTS.get(algorithm, {}).get(name, ALGORITHM_DEFAULTS["*"][name])


@dataclass
class DataConfig:
    """Which images to use and how the labeled split is drawn."""

    name: str = "digits"
    """Dataset: digits, mnist5k, cifar10, cifar100, stl10, svhn, imagefolder, tmed2."""
    data_dir: str = setting("data", bookkeeping=True)
    """Folder holding the dataset files (standard benchmarks)."""
    download: bool = setting(False, bookkeeping=True)
    """Download standard datasets with torchvision when they are missing (needs the `vision` extra)."""
    labels_per_class: int = setting(4, ge=1, le=10**6)
    """Labeled images per class drawn from the training pool (class-balanced)."""
    data_seed: int = setting(0, ge=0, le=SEED_MAX)
    """Seed of the labeled/unlabeled/validation split; independent of `train.seed`."""
    val_per_class: int = setting(0, ge=0, le=10**6)
    """Images per class held out of the training pool as a validation set (0 = none)."""
    split_file: str | None = None
    """Reuse the split saved by an earlier run (its `split.json`) instead of drawing one."""
    labels_file: str | None = None
    """CSV of new labels added to the labeled set: a `label` column and per row a `file` (an
    image, relative to the CSV) or an `index` into the training pool; the `interlude suggest` CSV
    with its label column filled in. Rows without a label are ignored."""
    resolution: int | None = setting(None, ge=4, le=4096)
    """Square image size fed to the network; None = native size (imagefolder 32, tmed2 112), or
    the pretrained backbone's input size (e.g. 224 for timm/vit_base_patch16_224)."""
    interpolation: Literal["bilinear", "bicubic"] | None = None
    """Filter used whenever images are resized (loading and prediction); None = the pretrained
    backbone's (bicubic for most timm weights), else bilinear."""
    mean: list[float] | None = setting(None, ge=0, le=1)
    """Per-channel normalisation mean (pixels in [0, 1]); None = the pretrained backbone's, else the
    dataset's statistics. Three values for one-channel images are averaged."""
    std: list[float] | None = setting(None, gt=0)
    """Per-channel normalisation std, given with `data.mean`; None = as `data.mean`."""
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
    labeled_classes: list[int] | None = setting(None, ge=0, le=10**5)
    """Open-set: classes kept for the labeled/test sets (None = all classes)."""
    outlier_ratio: float = setting(0.0, ge=0, lt=1)
    """Open-set: fraction of the unlabeled pool drawn from classes outside `labeled_classes`."""
    unlabeled_from: str | None = None
    """Dataset whose training pool gives the unlabeled images (domain shift: all of them, resized
    and channel-matched to `data.name`'s images); None = data.name."""
    test_from: str | None = None
    """Dataset whose test set is the run's test set (converted the same way); None = data.name."""
    class_weighted_loss: bool = False
    """Weight the supervised CE by the normalised inverse labeled class frequency (TMED style)."""
    use_unlabeled_extra: bool = True
    """STL-10: include the 100k `unlabeled` split in the unlabeled pool."""
    svhn_extra: bool = False
    """SVHN: add the 531k `extra` images (`extra_32x32.mat`) to the unlabeled pool, as FixMatch/USB
    do."""
    cache: bool = setting(True, bookkeeping=True)
    """Decode image folders, TMED-2, STL-10's unlabeled and SVHN's extra split once into an on-disk
    uint8 cache read by row (RAM does not grow with the pool); false decodes into RAM every run."""
    cache_dir: str | None = setting(None, bookkeeping=True)
    """Folder of that cache; None = `$INTERLUDE_CACHE_DIR`, else `$XDG_CACHE_HOME/interlude`, else
    `~/.cache/interlude`."""
    decode_workers: int = setting(0, ge=0, le=256, bookkeeping=True)
    """Threads decoding image files (0 = one per CPU core, at most 8)."""


@dataclass
class ModelConfig:
    """Backbone network."""

    arch: str = "auto"
    """small_cnn, wrn28_2, wrn28_8, wrn37_2, or any timm model as timm/<name> (timm/resnet50,
    timm/vit_base_patch16_224, ...); auto picks by dataset. vit_tiny|small|base[_patchP] name timm
    ViTs as earlier versions did."""
    fusion_layer: int = setting(-1, ge=-1, le=256)
    """Index of the stage (CNN) or block (ViT) *before* which embeddings are fused; -1 = before
    the last one."""
    width: int = setting(32, ge=1, le=4096)
    """small_cnn: channels of the first conv block."""
    pretrained: bool | str = False
    """true = timm's pretrained weights for a timm backbone (downloaded through the Hugging Face
    hub and cached), or a local weights file (.safetensors or weights-only .pth/.pt); or, for any
    backbone, a previous interlude run to start from (its folder, a checkpoint, or an exported
    model.safetensors: every weight, classifier included); false = random init."""
    patch_size: int | None = setting(None, ge=1, le=1024)
    """timm ViTs: patch size (2 for ViT-S/2 at 32 px); None = the model's own."""
    drop_path_rate: float | None = setting(None, ge=0, lt=1)
    """timm backbones: stochastic depth rate (training only); None = the model's default."""


@dataclass
class AlgorithmConfig:
    """Semi-supervised algorithm and its loss weights."""

    name: str = setting("interlude", choices=ALGORITHM_NAMES)
    """Semi-supervised algorithm (InterLUDE, its baselines, or labeled data only)."""
    lambda_u: float = setting(1.0, ge=0, le=1e4)
    """Weight of the unlabeled (pseudo-label) loss."""
    threshold: float = setting(0.95, gt=0, le=1)
    """FixMatch confidence threshold tau."""
    temperature: float = setting(1.0, gt=0, le=1e4)
    """Softmax temperature for pseudo-labels."""
    lambda_dc: float = setting(1.0, ge=0, le=1e4)
    """Weight of the delta-consistency loss (0 = off)."""
    dc_variant: Literal["avg", "cd", "cd_authors"] = "avg"
    """DC loss: `avg` over all paired unlabeled; `cd` only over those whose pseudo-label equals the
    label (per-row mask); `cd_authors` reproduces the authors' scalar-scaled cd."""
    fusion_strength: float = setting(0.1, ge=0, lt=1)
    """Embedding fusion alpha (0 = off)."""
    fusion_at_eval: bool = False
    """Reproduce the authors' code, which also fuses at evaluation (predictions then depend on batch)."""
    layout: Literal["interdigitated", "blocked"] = "interdigitated"
    """Batch order: per labeled item [lw, its uw, ls, its us], or all labeled then all unlabeled."""
    ema_p: float = setting(0.999, ge=0, lt=1)
    """FreeMatch/InterLUDE+: decay of the self-adaptive threshold statistics."""
    lambda_ent: float | None = setting(None, ge=0, le=1e4)
    """FreeMatch/InterLUDE+: weight of the self-adaptive fairness term (USB's FreeMatch configs use
    0.001, InterLUDE+ 0.05)."""
    flex_warmup: bool = True
    """FlexMatch: threshold warm-up (count unused samples as a class)."""

    def __post_init__(self) -> None:
        resolve_algorithm_defaults(self)


def resolve_algorithm_defaults(algorithm: AlgorithmConfig) -> None:
    """Replace each per-algorithm key left at None by its default for ``algorithm.name``."""
    for name in ALGORITHM_DEFAULTS["*"]:
        if getattr(algorithm, name) is None:
            setattr(algorithm, name, algorithm_default(algorithm.name, name))


@dataclass
class TrainConfig:
    """Optimisation, schedule, evaluation and bookkeeping."""

    steps: int = setting(2000, ge=1, le=10**9)
    """Total optimisation steps (the cosine schedule spans exactly these)."""
    batch_size: int = setting(16, ge=1, le=65536)
    """Labeled images per step (global batch across all ranks)."""
    mu: int = setting(7, ge=0, le=1024)
    """Unlabeled images per labeled image (0 only for `algorithm.name: supervised`)."""
    lr: float = setting(0.03, gt=0, le=1e4)
    """Peak learning rate (per optimizer step; the schedule scales it down)."""
    momentum: float = setting(0.9, ge=0, lt=1)
    """SGD momentum."""
    nesterov: bool = True
    """SGD Nesterov momentum (needs `momentum` > 0)."""
    weight_decay: float = setting(5e-4, ge=0, le=10)
    """Applied to conv/linear weights only, never to norm parameters, biases, or what the model
    exempts (a ViT's position embedding and tokens)."""
    cosine_cycles: float = setting(7.0 / 16.0, ge=0, le=1e4)
    """LR factor is cos(pi * cosine_cycles * step / steps), floored at 0."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """SGD (CNNs, as the papers) or AdamW (ViTs)."""
    layer_decay: float = setting(1.0, gt=0, le=1)
    """timm backbones: layer-wise lr decay factor, by timm's grouping of the model's layers (the
    head at `train.lr`, each layer below times this factor; 1 = off)."""
    ema_decay: float = setting(0.999, ge=0, lt=1)
    """EMA of the weights used for evaluation (0 = evaluate the raw model only)."""
    seed: int = setting(0, ge=0, le=SEED_MAX)
    """Training seed: initialisation, sampling and augmentation; independent of `data.data_seed`."""
    eval_interval: int = setting(500, ge=1, le=10**9, bookkeeping=True)
    """Evaluate (and maybe select the best checkpoint) every this many steps."""
    log_interval: int = setting(50, ge=1, le=10**9, bookkeeping=True)
    """Log training metrics every this many steps."""
    checkpoint_interval: int = setting(500, ge=1, le=10**9, bookkeeping=True)
    """Save `checkpoints/last.pt` every this many steps."""
    eval_batch_size: int = setting(256, ge=1, le=65536, bookkeeping=True)
    """Images per forward pass when evaluating."""
    device: str = setting("auto", rounding=True, pattern=(DEVICE_PATTERN, DEVICE_FORMS))
    """Training device; auto = CUDA when available, else CPU. Changes floating-point rounding: a
    resume on another device type warns that the run is no longer bit-exact."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast (CUDA); fp32 everywhere else."""
    channels_last: bool = True
    """Use channels_last memory format on CUDA (ignored on CPU)."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs",
                          "max-autotune"] = "default"
    """torch.compile mode when `compile: true`; reduce-overhead replays the model's kernels as CUDA
    graphs (no per-kernel launch cost)."""
    cudnn_benchmark: bool = False
    """Let cuDNN time its convolution algorithms at the first step (CUDA only); no gain measured
    for WRN-28-2 at the paper batch on an H200, where the step is not convolution-bound."""
    augment_on: Literal["device", "workers"] = "device"
    """Batched augmentation on the training device, or per-image in DataLoader workers."""
    num_workers: int = setting(2, ge=0, le=256, bookkeeping=True)
    """DataLoader workers when `augment_on: workers`."""
    out_dir: str = setting("runs", bookkeeping=True)
    """Folder holding run folders."""
    run_name: str | None = setting(None, bookkeeping=True)
    """Run folder name under `out_dir`; default `<dataset>-<algorithm>-s<seed>`."""
    tensorboard: bool = setting(False, bookkeeping=True)
    """Also write TensorBoard event files."""
    progress: bool = setting(True, bookkeeping=True)
    """Show a progress bar."""
    select_on: Literal["val", "last"] = "val"
    """Best checkpoint chosen on the validation set when there is one; never on test."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm under DDP."""
    threads: int = setting(0, ge=0, le=1024, rounding=True)
    """torch CPU threads (0 = torch default). Changes floating-point rounding: a resume with
    another thread count warns that the run is no longer bit-exact."""


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
        from interlude.files import write_atomic

        write_atomic(path, self.to_yaml())


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
    """Map dotted key -> (type name, default, one-line description), read from the source.

    The description is the string literal on the line below the field. The default is the
    field's own (None for the per-algorithm keys of :data:`ALGORITHM_DEFAULTS`).
    """
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
        for f in dataclasses.fields(cls):
            docs[f"{section}.{f.name}"] = (
                _type_name(hints[f.name]),
                f.default,
                descriptions.get(f.name, ""),
            )
    return docs


@dataclass(frozen=True)
class KeySpec:
    """Everything the schema says about one dotted key (see :func:`setting`)."""

    key: str
    type: Any
    default: Any
    """The field's default; None for a per-algorithm key (see ``per_algorithm``)."""
    range: Range | None = None
    bookkeeping: bool = False
    rounding: bool = False
    choices: tuple[str, ...] | None = None
    pattern: tuple[re.Pattern[str], str] | None = None
    per_algorithm: dict[str, Any] | None = None
    """Algorithm name -> default ("*" = any other) for keys in :data:`ALGORITHM_DEFAULTS`."""

    @property
    def kind(self) -> str:
        """``int``, ``float``, ``list[int]`` ... of the value once None is set aside."""
        return _type_name(_strip_none(self.type))

    @property
    def optional(self) -> bool:
        """None is a valid value (per-algorithm keys are resolved, so never None)."""
        return _allows_none(self.type) and self.per_algorithm is None

    @property
    def valid(self) -> str:
        """Compact valid values for docs: ``> 0``, ``[0, 1)``, ``auto, cpu, ...`` ('' = any)."""
        if self.range is not None:
            text = f"items {self.range}" if self.kind.startswith("list") else str(self.range)
        elif self.choices is not None:
            text = ", ".join(self.choices)
        elif self.pattern is not None:
            text = self.pattern[1]
        else:
            return ""
        return f"{text}, or None" if self.optional else text

    def algorithm_defaults(self) -> list[tuple[str, Any]]:
        """``[(algorithm, default), ..., ("others", default)]`` of a per-algorithm key."""
        if self.per_algorithm is None:
            return []
        name = self.key.rpartition(".")[2]
        listed = [(a, v[name]) for a, v in self.per_algorithm.items() if a != "*"]
        return [*listed, ("others", self.per_algorithm["*"][name])]

    def default_text(self) -> str:
        """The default as docs show it: ``0.03``, or ``freematch 0.001, others 0.05``."""
        if self.per_algorithm is None:
            return repr(self.default)
        return ", ".join(f"{algo} {value!r}" for algo, value in self.algorithm_defaults())


@functools.cache
def schema() -> dict[str, KeySpec]:
    """Dotted key -> :class:`KeySpec`, built from the dataclass fields (no source needed)."""
    specs: dict[str, KeySpec] = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            per_algorithm = None
            if cls is AlgorithmConfig and f.name in ALGORITHM_DEFAULTS["*"]:
                per_algorithm = {a: v for a, v in ALGORITHM_DEFAULTS.items() if f.name in v}
            default = None if f.default is dataclasses.MISSING else f.default
            specs[f"{section}.{f.name}"] = KeySpec(
                key=f"{section}.{f.name}", type=hints[f.name], default=default,
                range=meta.get("range"), bookkeeping=bool(meta.get("bookkeeping", False)),
                rounding=bool(meta.get("rounding", False)),
                choices=meta.get("choices"), pattern=meta.get("pattern"),
                per_algorithm=per_algorithm,
            )
    return specs


BOOKKEEPING_KEYS: frozenset[str] = frozenset(k for k, s in schema().items() if s.bookkeeping)
"""Keys that change where or how a run is recorded (logging, intervals, paths), not the weights
it trains (bit for bit, tested): a resumed run, a sweep's existing run and a report's variant may
differ in these."""
ROUNDING_KEYS: frozenset[str] = frozenset(k for k, s in schema().items() if s.rounding)
"""Keys that change only floating-point rounding (device, threads): a sweep's existing run and a
report's variant may differ in these; a resume may too, with a warning that it is not
bit-exact (the trainer compares the device type and thread count actually used)."""


def diff(
    old: Config | Mapping[str, Any],
    new: Config | Mapping[str, Any],
    *,
    include_bookkeeping: bool = False,
) -> list[str]:
    """One line per dotted key whose value differs, e.g. ``"train.lr: 0.03 there, 0.1 now"``.

    ``old``/``new`` are Configs or ``Config.to_dict()`` trees (nested or already flattened to
    dotted keys), e.g. a saved ``config.yaml`` and the config of now. Only keys present in both are
    compared, so a key added by a newer version does not make older runs differ; keys in
    :data:`BOOKKEEPING_KEYS` and :data:`ROUNDING_KEYS` are skipped unless
    ``include_bookkeeping``. Keys come in schema order.
    """
    there, now = dotted(old), dotted(new)
    known = [k for k in schema() if k in there and k in now]
    other = sorted((there.keys() & now.keys()) - set(known))
    return [
        f"{key}: {shown(there[key])} there, {shown(now[key])} now"
        for key in [*known, *other]
        if (include_bookkeeping or key not in BOOKKEEPING_KEYS | ROUNDING_KEYS)
        and there[key] != now[key]
    ]


def dotted(tree: Config | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` (or a Config) -> ``{"train.lr": 0.1}``."""
    if isinstance(tree, Config):
        tree = tree.to_dict()
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_reference_markdown() -> str:
    """The config reference table embedded in the README (kept in sync by a test)."""
    rows = ["| key | type | default | valid | meaning |", "|---|---|---|---|---|"]
    specs = schema()
    for key, (tp, _, doc) in field_docs().items():
        spec = specs[key]
        text = " ".join(doc.split()).replace("|", "\\|")
        type_text = (spec.kind if spec.per_algorithm else tp).replace("|", " \\| ")
        default = f"`{spec.default!r}`"
        if spec.per_algorithm is not None:
            default = "per algorithm: " + ", ".join(
                f"{algo} `{value!r}`" for algo, value in spec.algorithm_defaults()
            )
        valid = spec.valid.replace("|", "\\|")
        rows.append(f"| `{key}` | {type_text} | {default} | {valid} | {text} |")
    return "\n".join(rows)


def _strip_none(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _allows_none(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


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
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {shown(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {shown(value)} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {shown(value)}")
        return [_coerce(key, v, item_tp) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {shown(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
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
        raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {shown(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {shown(value)}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {shown(value)}")
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
                f"ambiguous key {shown(key)}: write one of {', '.join(f'{s}.{key}' for s in owners)}"
            )
    close = difflib.get_close_matches(key, valid_keys(), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(
        f"unknown config key {shown(key)}.{hint} Valid keys: {', '.join(valid_keys())}"
    )


# Values older versions wrote that now have another spelling: (key, old value) -> new value.
_LEGACY_VALUES: dict[tuple[str, Any], Any] = {
    ("model.pretrained", None): False,  # `pretrained: null` meant no weights before true/false
}


def _set(cfg: Config, key: str, value: Any) -> None:
    section, name = _resolve_key(key)
    sub = getattr(cfg, section)
    tp = typing.get_type_hints(type(sub))[name]
    dotted = f"{section}.{name}"
    if value is None and (dotted, None) in _LEGACY_VALUES:
        value = _LEGACY_VALUES[dotted, None]
    setattr(sub, name, _coerce(dotted, value, tp))


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
        raise ConfigError(f"override {shown(text)} must look like key=value (e.g. train.steps=500)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else raw  # a SafeLoader
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise ConfigError(f"override {shown(key.strip())}: the value is nested too deeply; "
                          "write a flat value") from None
    except ConfigError as exc:
        raise ConfigError(f"override {shown(key.strip())}: {exc}") from None
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)
    return key.strip(), value


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(c in text.lower() for c in ".e")


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding the same key twice, at any depth.

    Plain YAML keeps the last value silently, so ``lr: 0.1`` written twice in a long config
    would train with whichever came last. Keys merged in with ``<<: *anchor`` may be overridden.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._root = node
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first != key_node.start_mark.line + 1:
                    dotted = ".".join([*_yaml_path(getattr(self, "_root", None), node), str(key)])
                    raise ConfigError(
                        f"{key_node.start_mark.name}: key '{dotted}' is given twice (lines {first} "
                        f"and {key_node.start_mark.line + 1}); keep only one of them"
                    )
        return super().construct_mapping(node, deep=deep)


MAX_YAML_VALUES = 100_000
"""Most values a config (file or override) may hold once its aliases are expanded."""


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose anchors/aliases expand past :data:`MAX_YAML_VALUES` values, or
    refer to themselves, before anything is built from it.

    ``&a [x, x] , &b [*a, *a], ...`` takes a few hundred characters and expands to billions of
    values: harmless while the aliases are shared references, a hang as soon as anything walks
    the value (validation, an error message). Sizes are counted once per node (memoised), so the
    check costs the size of the text, not of the expansion.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes and sizes[id(node)] >= 0:
            continue
        children = _yaml_children(node)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                _refuse_expansion(node, f"expand to more than {MAX_YAML_VALUES:,} values")
            continue
        if sizes.get(id(node)) == -1:
            _refuse_expansion(node, "refer to themselves")
        sizes[id(node)] = -1  # in progress: meeting it again below means a cycle
        stack.append((node, True))
        for child in children:
            if sizes.get(id(child)) == -1:
                _refuse_expansion(child, "refer to themselves")
            if id(child) not in sizes:
                stack.append((child, False))


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse_expansion(node: yaml.Node, what: str) -> None:
    mark = node.start_mark
    where = "" if mark.name.startswith("<") else f"{mark.name}, "  # a file, not an override
    raise ConfigError(f"{where}line {mark.line + 1}: the YAML anchors/aliases (&name, *name) here "
                      f"{what}; write the values out instead")


def _yaml_path(root: yaml.Node | None, target: yaml.Node) -> list[str]:
    """Keys leading from the document root to ``target`` (for error messages)."""
    stack: list[tuple[yaml.Node, list[str]]] = [(root, [])] if root is not None else []
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, [*path, str(k.value)]) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, [*path, str(i)]) for i, v in enumerate(node.value))
    return []


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file with :class:`UniqueKeyLoader`; any problem is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.load(handle, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; a config must be YAML text "
                          "(save it as UTF-8)") from None
    except RecursionError:
        raise ConfigError(f"{path}: values are nested too deeply to be a config") from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Build a validated :class:`Config` from an optional YAML file and overrides.

    Per-algorithm keys (:data:`ALGORITHM_DEFAULTS`) not given get the default of the final
    ``algorithm.name``, so ``algorithm.name=freematch`` alone gives ``lambda_ent`` 0.001.
    """
    cfg = _unresolved_config()
    if path is not None:
        tree = read_yaml(path) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path} must contain a mapping of sections (data, model, ...)")
        for key, value in _flatten(tree).items():
            _set(cfg, key, value)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        _set(cfg, key, value)
    resolve_algorithm_defaults(cfg.algorithm)
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config saved with :meth:`Config.to_dict` (e.g. from a checkpoint)."""
    cfg = _unresolved_config()
    for key, value in _flatten(tree).items():
        _set(cfg, key, value)
    resolve_algorithm_defaults(cfg.algorithm)
    validate(cfg)
    return cfg


def _unresolved_config() -> Config:
    """The default Config with its per-algorithm keys back at None (not yet resolved)."""
    cfg = Config()
    for name in ALGORITHM_DEFAULTS["*"]:
        setattr(cfg.algorithm, name, None)
    return cfg


def validate(cfg: Config) -> None:
    """Check every key against its schema (range, choices, format), then cross-field rules.

    Every problem is a one-line ConfigError naming the key, the value and what is valid.
    """
    for key, spec in schema().items():
        section, _, name = key.partition(".")
        _check_key(spec, getattr(getattr(cfg, section), name), cfg.algorithm.name)
    t, a = cfg.train, cfg.algorithm
    if t.mu < 1 and a.name != "supervised":
        raise ConfigError(
            f"train.mu={t.mu} is out of range for {a.name}: it needs at least 1 unlabeled image "
            "per labeled image (train.mu=0 is for algorithm.name=supervised)"
        )
    if t.optimizer == "sgd" and t.nesterov and t.momentum == 0:
        raise ConfigError(
            "train.nesterov=true needs train.momentum > 0, got 0.0; set train.nesterov=false or "
            "a momentum such as 0.9"
        )
    _validate_inputs(cfg.data)
    _validate_pretrained(cfg.model)
    _validate_run_name(t.run_name)


def _validate_run_name(name: str | None) -> None:
    """A run folder stays inside ``train.out_dir``: sub-folders are fine (sweeps use
    ``variant/seed0``), an absolute path or a ``..`` that climbs out is not."""
    if name is None:
        return
    parts = name.replace("\\", "/").split("/")
    if not name.strip() or name.startswith(("/", "\\")) or ".." in parts or (
            len(name) > 1 and name[1] == ":"):
        raise ConfigError(
            f"train.run_name={shown(name)} must name a folder inside train.out_dir (no absolute path, "
            "no '..'); set train.out_dir to choose where runs go"
        )


def _validate_inputs(d: DataConfig) -> None:
    if d.unlabeled_from not in (None, d.name) and (d.labeled_classes is not None
                                                    or d.outlier_ratio > 0):
        raise ConfigError(
            f"data.unlabeled_from={shown(d.unlabeled_from)} cannot be combined with the open-set keys "
            "data.labeled_classes/data.outlier_ratio (the open set is drawn from data.name's own "
            "pool); unset one of them"
        )
    if (d.mean is None) != (d.std is None):
        raise ConfigError(
            f"data.mean={shown(d.mean)} and data.std={shown(d.std)}: give both (one value per channel) or "
            "neither"
        )
    if d.mean is not None and (len(d.mean) != len(d.std) or len(d.mean) not in (1, 3)):
        raise ConfigError(
            f"data.mean={shown(d.mean)} and data.std={shown(d.std)} must both hold 1 or 3 values (one per "
            "channel)"
        )


def _validate_pretrained(m: ModelConfig) -> None:
    if isinstance(m.pretrained, str) and not m.pretrained.strip():
        raise ConfigError("model.pretrained is an empty string: use true, false or a file path")
    if m.pretrained is True and not is_timm_backbone(m.arch):
        raise ConfigError(
            f"model.pretrained=true (timm's weights) applies to timm backbones, not model.arch="
            f"{m.arch}; use model.arch=timm/<name>, a previous run's folder or export "
            "(model.pretrained=RUN_DIR), or model.pretrained=false"
        )


TIMM_PREFIX = "timm/"
LEGACY_VIT = re.compile(r"(vit_tiny|vit_small|vit_base)(?:_patch([1-9][0-9]*))?")
"""``vit_small`` / ``vit_small_patch16``: the names of the ViTs of earlier versions (now timm's)."""


def is_timm_backbone(arch: str) -> bool:
    """Whether ``model.arch`` names a timm model (``timm/<name>`` or a ViT of earlier versions)."""
    return arch.startswith(TIMM_PREFIX) or LEGACY_VIT.fullmatch(arch) is not None


def _check_key(spec: KeySpec, value: Any, algorithm: str) -> None:
    key = spec.key
    if value is None:
        if spec.optional:
            return
        if spec.per_algorithm is not None:
            raise ConfigError(
                f"{key}=None was not resolved to the per-algorithm default; build configs with "
                "load_config or config_from_dict (or call resolve_algorithm_defaults)"
            )
        raise ConfigError(f"{key}=None is not allowed: give a {spec.kind}")
    if spec.range is not None:
        _check_range(spec, value, algorithm)
    if spec.choices is not None and value not in spec.choices:
        close = difflib.get_close_matches(str(value), spec.choices, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}={shown(value)} is not valid: use one of {', '.join(spec.choices)}{hint}")
    if spec.pattern is not None:
        regex, forms = spec.pattern
        if not isinstance(value, str) or regex.fullmatch(value) is None:
            raise ConfigError(f"{key}={shown(value)} is not valid: use {forms}")


def _check_range(spec: KeySpec, value: Any, algorithm: str) -> None:
    rng = spec.range
    assert rng is not None
    is_list = isinstance(value, list)
    integer = "int" in spec.kind
    if all(v in rng and (not integer or isinstance(v, int)) for v in (value if is_list else [value])):
        return
    what = "an integer" if integer else "a finite number"
    must = f"every item must be {what}" if is_list else f"must be {what}"
    none = ", or none" if spec.optional else ""
    default = (algorithm_default(algorithm, spec.key.rpartition(".")[2])
               if spec.per_algorithm is not None else spec.default)
    hint = f" (the default is {default!r})" if default is not None else ""
    raise ConfigError(
        f"{spec.key}={shown(value)} is out of range: {must} {rng.phrase()}{none}{hint}"
    )
