"""The generic config sections and the base every component's options class extends.

A config has four sections. ``train`` is one fixed class; ``data``, ``model`` and ``algorithm``
hold generic keys (:class:`DataConfig`, :class:`ModelConfig`, :class:`AlgorithmOptions`) plus
the options of the chosen component (dataset format, backbone family, algorithm), which the
component declares beside its code as a subclass of that generic class and registers once
(:mod:`interlude.config.registry`). Every section is a pydantic model: ranges are ``Field``
constraints, the attribute docstring below a field is the key's description (``interlude config
keys`` and the README table show it), and :data:`BOOKKEEPING` / :data:`ROUNDING` mark keys that
do not change what a run computes.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

SEED_MAX = 2**63 - 1
"""Largest seed: torch and numpy generators take 64-bit seeds."""

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
DEVICE_FORMS = "auto, cpu, cuda, cuda:N (N = GPU index) or mps"

BOOKKEEPING: dict[str, Any] = {"bookkeeping": True}
"""``Field(json_schema_extra=BOOKKEEPING)``: the key changes where or how a run is recorded
(logging, intervals, paths), not the weights it trains (a test resumes under each changed value
and compares the weights bit for bit), so a resume, a sweep or a report may ignore it."""
ROUNDING: dict[str, Any] = {"rounding": True}
"""``Field(json_schema_extra=ROUNDING)``: the key changes only floating-point rounding (device,
threads): the same experiment, not the same bits; a sweep or a report ignores it and a resume
under another value warns that it is no longer bit-exact."""


def forms(text: str, **extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a ``pattern`` key: how to describe its valid forms in errors."""
    return {"forms": text, **extra}


class Options(BaseModel):
    """Base of every config section: unknown fields refused, NaN/inf refused, docstrings kept.

    Besides pydantic's own (lax) parsing, a bool is not accepted as a number nor a number as a
    bool (YAML's ``1`` is not ``true``), and ``none``/``null`` written as text mean None where
    None is allowed (``data.resolution=none``).
    """

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False,
        validate_default=False, protected_namespaces=(),
    )

    @field_validator("*", mode="before")
    @classmethod
    def _plain_value(cls, value: Any, info: ValidationInfo) -> Any:
        return plain_value(value, cls.model_fields[info.field_name].annotation)


def plain_value(value: Any, annotation: Any) -> Any:
    """``value`` with text None mapped to None; refuses bools for numbers and numbers for bools."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and allows_none(annotation):
        return None
    kind = strip_none(annotation)
    if kind in (int, float) and isinstance(value, bool):
        raise PydanticCustomError("int_type" if kind is int else "float_type", "not a number")
    if kind is bool and not isinstance(value, (bool, str)) and value is not None:
        raise PydanticCustomError("bool_type", "not a bool")
    if typing.get_origin(kind) is list and isinstance(value, list):
        item = strip_none(typing.get_args(kind)[0])
        if item in (int, float) and any(isinstance(v, bool) for v in value):
            raise PydanticCustomError("int_type" if item is int else "float_type", "not a number")
    return value


def strip_none(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``Annotated[int, ...]`` -> ``int``; anything else unchanged."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return strip_none(args[0])
    return tp


def allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


Items = Annotated  # readability: ``list[Items[int, Field(ge=0)]]`` ranges every item


class DataConfig(Options):
    """Which images to use and how the labeled split is drawn (keys of every dataset)."""

    name: str = "digits"
    """Dataset (a registered dataset format)."""
    data_dir: str = Field("data", json_schema_extra=BOOKKEEPING)
    """Folder holding the dataset files (standard benchmarks)."""
    download: bool = Field(False, json_schema_extra=BOOKKEEPING)
    """Download standard datasets with torchvision when they are missing (needs the `vision` extra)."""
    labels_per_class: int = Field(4, ge=1, le=10**6)
    """Labeled images per class drawn from the training pool (class-balanced)."""
    data_seed: int = Field(0, ge=0, le=SEED_MAX)
    """Seed of the labeled/unlabeled/validation split; independent of `train.seed`."""
    val_per_class: int = Field(0, ge=0, le=10**6)
    """Images per class held out of the training pool as a validation set (0 = none)."""
    split_file: str | None = None
    """Reuse the split saved by an earlier run (its `split.json`) instead of drawing one."""
    labels_file: str | None = None
    """CSV of new labels added to the labeled set: a `label` column and per row a `file` (an
    image, relative to the CSV) or an `index` into the training pool; the `interlude suggest` CSV
    with its label column filled in. Rows without a label are ignored."""
    resolution: int | None = Field(None, ge=4, le=4096)
    """Square image size fed to the network; None = native size (imagefolder 32, tmed2 112), or
    the pretrained backbone's input size (e.g. 224 for timm/vit_base_patch16_224)."""
    interpolation: Literal["bilinear", "bicubic"] | None = None
    """Filter used whenever images are resized (loading and prediction); None = the pretrained
    backbone's (bicubic for most timm weights), else bilinear."""
    mean: list[Items[float, Field(ge=0, le=1)]] | None = None
    """Per-channel normalisation mean (pixels in [0, 1]); None = the pretrained backbone's, else the
    dataset's statistics. Three values for one-channel images are averaged."""
    std: list[Items[float, Field(gt=0)]] | None = None
    """Per-channel normalisation std, given with `data.mean`; None = as `data.mean`."""
    hflip: bool | None = None
    """Random horizontal flip in the weak view; None uses the dataset default (off for digits)."""
    labeled_classes: list[Items[int, Field(ge=0, le=10**5)]] | None = None
    """Open-set: classes kept for the labeled/test sets (None = all classes)."""
    outlier_ratio: float = Field(0.0, ge=0, lt=1)
    """Open-set: fraction of the unlabeled pool drawn from classes outside `labeled_classes`."""
    unlabeled_from: str | None = None
    """Dataset whose training pool gives the unlabeled images (domain shift: all of them, resized
    and channel-matched to `data.name`'s images); None = data.name."""
    test_from: str | None = None
    """Dataset whose test set is the run's test set (converted the same way); None = data.name."""
    class_weighted_loss: bool = False
    """Weight the supervised CE by the normalised inverse labeled class frequency (TMED style)."""
    cache: bool = Field(True, json_schema_extra=BOOKKEEPING)
    """Decode image folders, TMED-2, STL-10's unlabeled and SVHN's extra split once into an on-disk
    uint8 cache read by row (RAM does not grow with the pool); false decodes into RAM every run."""
    cache_dir: str | None = Field(None, json_schema_extra=BOOKKEEPING)
    """Folder of that cache; None = `$INTERLUDE_CACHE_DIR`, else `$XDG_CACHE_HOME/interlude`, else
    `~/.cache/interlude`."""
    decode_workers: int = Field(0, ge=0, le=256, json_schema_extra=BOOKKEEPING)
    """Threads decoding image files (0 = one per CPU core, at most 8)."""


class ModelConfig(Options):
    """Backbone network (keys of every backbone family)."""

    has_pretrained_weights: ClassVar[bool] = False
    """Whether ``model.pretrained=true`` (the family's published weights) means anything."""

    arch: str = "auto"
    """Backbone (a registered network, or timm/<name> for any timm model: timm/resnet50,
    timm/vit_base_patch16_224, ...); auto picks by dataset."""
    fusion_layer: int = Field(-1, ge=-1, le=256)
    """Index of the stage (CNN) or block (ViT) *before* which embeddings are fused; -1 = before
    the last one."""
    pretrained: bool | str = False
    """true = timm's pretrained weights for a timm backbone (downloaded through the Hugging Face
    hub and cached), or a local weights file (.safetensors or weights-only .pth/.pt); or, for any
    backbone, a previous interlude run to start from (its folder, a checkpoint, or an exported
    model.safetensors: every weight, classifier included); false = random init."""


class AlgorithmOptions(Options):
    """Semi-supervised algorithm (keys of every algorithm); each algorithm extends this class."""

    name: str = "interlude"
    """Semi-supervised algorithm (InterLUDE, its baselines, or labeled data only)."""
    layout: Literal["interdigitated", "blocked"] = "interdigitated"
    """Batch order: per labeled item [lw, its uw, ls, its us], or all labeled then all unlabeled."""


AlgorithmConfig = AlgorithmOptions
"""The generic algorithm section (earlier name)."""


class TrainConfig(Options):
    """Optimisation, schedule, evaluation and bookkeeping."""

    steps: int = Field(2000, ge=1, le=10**9)
    """Total optimisation steps (the cosine schedule spans exactly these)."""
    batch_size: int = Field(16, ge=1, le=65536)
    """Labeled images per step (global batch across all ranks)."""
    mu: int = Field(7, ge=0, le=1024)
    """Unlabeled images per labeled image (0 only for algorithms trained on labeled images only)."""
    lr: float = Field(0.03, gt=0, le=1e4)
    """Peak learning rate (per optimizer step; the schedule scales it down)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    nesterov: bool = True
    """SGD Nesterov momentum (needs `momentum` > 0)."""
    weight_decay: float = Field(5e-4, ge=0, le=10)
    """Applied to conv/linear weights only, never to norm parameters, biases, or what the model
    exempts (a ViT's position embedding and tokens)."""
    cosine_cycles: float = Field(7.0 / 16.0, ge=0, le=1e4)
    """LR factor is cos(pi * cosine_cycles * step / steps), floored at 0."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """SGD (CNNs, as the papers) or AdamW (ViTs)."""
    layer_decay: float = Field(1.0, gt=0, le=1)
    """timm backbones: layer-wise lr decay factor, by timm's grouping of the model's layers (the
    head at `train.lr`, each layer below times this factor; 1 = off)."""
    ema_decay: float = Field(0.999, ge=0, lt=1)
    """EMA of the weights used for evaluation (0 = evaluate the raw model only)."""
    seed: int = Field(0, ge=0, le=SEED_MAX)
    """Training seed: initialisation, sampling and augmentation; independent of `data.data_seed`."""
    eval_interval: int = Field(500, ge=1, le=10**9, json_schema_extra=BOOKKEEPING)
    """Evaluate (and maybe select the best checkpoint) every this many steps."""
    log_interval: int = Field(50, ge=1, le=10**9, json_schema_extra=BOOKKEEPING)
    """Log training metrics every this many steps."""
    checkpoint_interval: int = Field(500, ge=1, le=10**9, json_schema_extra=BOOKKEEPING)
    """Save `checkpoints/last.pt` every this many steps."""
    eval_batch_size: int = Field(256, ge=1, le=65536, json_schema_extra=BOOKKEEPING)
    """Images per forward pass when evaluating."""
    device: str = Field("auto", pattern=DEVICE_PATTERN,
                        json_schema_extra=forms(DEVICE_FORMS, **ROUNDING))
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
    num_workers: int = Field(2, ge=0, le=256, json_schema_extra=BOOKKEEPING)
    """DataLoader workers when `augment_on: workers`."""
    out_dir: str = Field("runs", json_schema_extra=BOOKKEEPING)
    """Folder holding run folders."""
    run_name: str | None = Field(None, json_schema_extra=BOOKKEEPING)
    """Run folder name under `out_dir`; default `<dataset>-<algorithm>-s<seed>`."""
    tensorboard: bool = Field(False, json_schema_extra=BOOKKEEPING)
    """Also write TensorBoard event files."""
    progress: bool = Field(True, json_schema_extra=BOOKKEEPING)
    """Show a progress bar."""
    select_on: Literal["val", "last"] = "val"
    """Best checkpoint chosen on the validation set when there is one; never on test."""
    sync_bn: bool = False
    """Convert BatchNorm to SyncBatchNorm under DDP."""
    threads: int = Field(0, ge=0, le=1024, json_schema_extra=ROUNDING)
    """torch CPU threads (0 = torch default). Changes floating-point rounding: a resume with
    another thread count warns that the run is no longer bit-exact."""
