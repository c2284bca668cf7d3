"""Backbones from timm: ``model.arch=timm/<name>`` builds any timm model with InterLUDE's fusion point.

**Fusion point.** timm describes every backbone's stages in ``model.feature_info`` (the modules
whose outputs are its feature maps: ``layer1..4`` of a ResNet, ``stages.0..3`` of a ConvNeXt,
``blocks.0..11`` of a ViT). The fusion points are those modules, leading stem entries (a bare
activation or norm, a ``stem``) left out; :class:`~interlude.nets.fusion.EmbeddingFusion` acts on
the *input* of the chosen one through a forward pre-hook, so it sits before the last stage of a
CNN or the last block of a ViT by default (``model.fusion_layer`` counts these points). A hook
leaves the module tree and its parameter names exactly as timm made them: pretrained weights,
timm's layer-wise lr decay and exports see a plain timm model. The hook is a bound method of
``model.fusion``, so a deep copy of the model (the EMA) calls its own copy's fusion. On a token
model the whole token tensor of a sample (class token included) is mixed with the next sample's,
the same rows-of-the-batch rule as the CNNs.

**Weights.** ``model.pretrained=true`` asks timm for its pretrained weights (through the Hugging
Face hub, cached under its cache folder); ``model.pretrained=PATH`` hands a local file to timm's
own loader (``pretrained_cfg_overlay=dict(file=PATH)``), so the model's own checkpoint filter
resizes position embeddings to the image size, adapts the input channels, and the classifier head
of the file is dropped (a new one is trained). Nothing else is ever downloaded.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from interlude.config import ModelConfig, register_backbone
from interlude.errors import ConfigError
from interlude.nets.fusion import EmbeddingFusion

log = logging.getLogger("interlude")

TIMM_PREFIX = "timm/"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_TIMM_LOADER_LOG = "timm.models._builder"


@dataclass(frozen=True)
class Inputs:
    """What a pretrained backbone expects: square side, resize filter, normalisation."""

    size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


class TimmOptions(ModelConfig):
    """Options of timm backbones (``model.arch=timm/<name>``)."""

    has_pretrained_weights = True

    patch_size: int | None = Field(None, ge=1, le=1024)
    """timm ViTs: patch size (2 for ViT-S/2 at 32 px); None = the model's own."""
    drop_path_rate: float | None = Field(None, ge=0, lt=1)
    """Stochastic depth rate (training only); None = the model's default."""


def timm_name(arch: str, cfg: TimmOptions, resolution: int) -> tuple[str, dict[str, Any]]:
    """timm's model name for ``arch`` and the keyword arguments the config adds (patch, drop path)."""
    kwargs: dict[str, Any] = {}
    name = arch.removeprefix(TIMM_PREFIX)
    if cfg.patch_size is not None:
        kwargs["patch_size"] = cfg.patch_size
    if cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    return name, kwargs


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {' or '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ConfigError(
            f"model.arch={TIMM_PREFIX}{name}: timm has no model of that name.{hint} List them with "
            "python -c \"import timm; print(timm.list_models('*vit*'))\""
        )


def pretrained_inputs(cfg: ModelConfig) -> Inputs | None:
    """Input size, filter and mean/std of the pretrained weights ``cfg`` asks for, from timm's
    pretrained config (a table lookup, no network); None when the backbone is not a pretrained
    ``timm/`` model."""
    if cfg.pretrained is False or not cfg.arch.startswith(TIMM_PREFIX):
        return None
    import timm.models

    name = cfg.arch.removeprefix(TIMM_PREFIX)
    _check_name(name)
    pretrained = timm.models.get_pretrained_cfg(name)
    if pretrained is None:
        return None
    _, height, width = pretrained.input_size
    interpolation = pretrained.interpolation if pretrained.interpolation in (
        "bilinear", "bicubic") else "bilinear"
    return Inputs(int(max(height, width)), interpolation, tuple(pretrained.mean),
                  tuple(pretrained.std))


@register_backbone("timm", TimmOptions, prefix=TIMM_PREFIX, example="resnet18")
def build_timm_net(arch: str, cfg: TimmOptions, num_classes: int, in_channels: int,
                   resolution: int) -> nn.Module:
    """The timm model ``arch`` for ``resolution`` px images, weights per ``cfg.pretrained``, with
    ``model.fusion`` hooked before the stage/block ``cfg.fusion_layer``."""
    name, kwargs = timm_name(arch, cfg, resolution)
    _check_name(name)
    kwargs.update(num_classes=num_classes, in_chans=in_channels)
    source = None
    if isinstance(cfg.pretrained, str):
        source = weights_file(cfg.pretrained)
        # num_classes=0 for the file's head: timm then always drops it (a new head is trained)
        kwargs["pretrained_cfg_overlay"] = {"file": str(source), "num_classes": 0}
    model = _create(name, cfg.pretrained is not False, source, resolution, kwargs)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and (resolution % patch[0] or resolution % patch[-1]):
        raise ConfigError(
            f"image size {resolution} is not a multiple of the patch {patch[0]} of {arch}; set "
            "data.resolution to a multiple of it, or model.patch_size"
        )
    attach_fusion(model, cfg.fusion_layer, arch)
    return model


def weights_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.pretrained file not found: {path} (a .safetensors or "
                          "weights-only .pth file; or model.pretrained=true for timm's weights)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConfigError(f"model.pretrained={path}: expected a {', '.join(WEIGHT_SUFFIXES)} "
                          "weights file")
    return path


def _create(name: str, pretrained: bool, source: Path | None, resolution: int,
            kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``, with ``img_size`` for the models that take one (token models)."""
    try:
        return _create_model(name, pretrained, source, {**kwargs, "img_size": resolution})
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise _bad_argument(name, exc) from None
    try:
        return _create_model(name, pretrained, source, kwargs)
    except TypeError as exc:
        raise _bad_argument(name, exc) from None


def _bad_argument(name: str, exc: TypeError) -> ConfigError:
    return ConfigError(f"{TIMM_PREFIX}{name} does not take {str(exc).split('argument')[-1].strip()}"
                       " (model.patch_size applies to ViTs only); leave that key at null")


def _create_model(name: str, pretrained: bool, source: Path | None,
                  kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    if source is None:
        return _download(name, kwargs)
    with _capture_load_report() as report:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except TypeError:
            raise
        except Exception as exc:  # pickle, safetensors, shape and filter errors of many types
            raise ConfigError(
                f"model.pretrained={source} does not load into {TIMM_PREFIX}{name} "
                f"({type(exc).__name__}: {_first_line(exc)}); check model.arch and model.patch_size"
            ) from None
    head = model.pretrained_cfg.get("classifier") or ()
    heads = (head,) if isinstance(head, str) else tuple(head)
    lacking = [k for k in report["Missing"] if not k.startswith(tuple(f"{h}." for h in heads))]
    if lacking:
        raise ConfigError(
            f"model.pretrained={source} lacks {len(lacking)} tensors of {TIMM_PREFIX}{name} (e.g. "
            f"{', '.join(lacking[:3])}): it holds another model's weights; check model.arch"
        )
    mistyped = _integer_tensors_for_floats(source, model.state_dict())
    if mistyped:
        raise ConfigError(
            f"model.pretrained={source} holds integer tensors where {TIMM_PREFIX}{name} has float "
            f"weights ({', '.join(mistyped[:3])}): they would load as whole numbers; the file is "
            "damaged or not a weights file of this model"
        )
    non_finite = [k for k, v in model.state_dict().items()
                  if v.is_floating_point() and not bool(v.isfinite().all())]
    if non_finite:
        raise ConfigError(
            f"model.pretrained={source} holds NaN/inf values in {len(non_finite)} tensor(s) (e.g. "
            f"{', '.join(non_finite[:3])}): the file is damaged; use another weights file"
        )
    extra = report["Unexpected"]
    if extra:  # an MAE decoder, a projection head ...: not part of this backbone
        log.warning("model.pretrained: ignored %d tensors that %s%s lacks: %s", len(extra),
                    TIMM_PREFIX, name, ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    return model


_WRAPPER_PREFIXES = ("module.", "model.", "state_dict.", "state_dict_ema.")


def _integer_tensors_for_floats(source: Path, expected: dict[str, torch.Tensor]) -> list[str]:
    """Names of the file's non-float tensors that fill a float tensor of the model (matched by
    name, after the ``module.`` / ``model.`` prefixes checkpoints carry): ``load_state_dict``
    would cast them silently. The file is read again by its dtypes only (safetensors) or
    memory-mapped (.pth), so this costs no second copy of the weights."""
    found: dict[str, torch.dtype] = {}
    if source.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(source), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                found[key] = handle.get_slice(key).get_dtype()
    else:
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        _tensor_dtypes(state, "", found)
    mistyped = []
    for key, dtype in found.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        floating = dtype.is_floating_point if isinstance(dtype, torch.dtype) else \
            str(dtype).upper().startswith(("F", "BF"))
        if name in expected and expected[name].is_floating_point() and not floating:
            mistyped.append(key)
    return mistyped


def _tensor_dtypes(tree: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(tree, torch.Tensor):
        out[prefix] = tree.dtype
    elif isinstance(tree, dict):
        for key, value in tree.items():
            _tensor_dtypes(value, f"{prefix}{key}." if not isinstance(value, torch.Tensor)
                           else f"{prefix}{key}", out)


def _download(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except TypeError:
        raise
    except (OSError, HfHubHTTPError) as exc:
        raise ConfigError(
            f"could not get timm's pretrained weights for {TIMM_PREFIX}{name} ({type(exc).__name__}"
            f"); they are downloaded through the Hugging Face hub and cached in "
            f"{constants.HF_HUB_CACHE}: run once online, or set model.pretrained=PATH to a local "
            ".safetensors or weights-only .pth file"
        ) from None
    except RuntimeError as exc:
        if "pretrained" not in str(exc):
            raise
        raise ConfigError(f"{TIMM_PREFIX}{name}: {_first_line(exc)}; set model.pretrained=false "
                          "or a weights file") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


@contextmanager
def _capture_load_report() -> Iterator[dict[str, list[str]]]:
    """The tensor names timm reports missing / unexpected while it loads a file.

    timm loads non-strictly whenever it drops the classifier, and reports what it could not fill
    only in log lines; a file of another model would otherwise leave a backbone at random init
    without a word. The records are read through a filter on timm's logger, which also keeps
    timm's chatter (hundreds of names) out of the user's log: the caller says it in one line.
    """
    logger = logging.getLogger(_TIMM_LOADER_LOG)
    report: dict[str, list[str]] = {"Missing": [], "Unexpected": []}

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for kind, names in report.items():
            prefix = f"{kind} keys ("
            if message.startswith(prefix):
                names.extend(k.strip() for k in message[len(prefix):].split(")")[0].split(",")
                             if k.strip())
                return False
        if "already match the model" in message:  # a one-channel file for a one-channel model
            return False
        return record.levelno > logging.INFO

    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addFilter(keep)
    try:
        yield report
    finally:
        logger.removeFilter(keep)
        logger.setLevel(level)


# --- fusion -------------------------------------------------------------------------------------


def fusion_points(model: nn.Module, arch: str) -> list[str]:
    """Names of the modules fusion may precede: timm's feature stages, leading stem entries out."""
    info = getattr(model, "feature_info", None) or []
    names = [entry["module"] for entry in info if isinstance(entry, dict) and "module" in entry]
    while names and _is_stem(model, names[0]):
        names.pop(0)
    if not names:
        raise ConfigError(f"{arch} lists no feature stages (timm's feature_info), so the fusion "
                          "point cannot be placed; choose another timm model")
    return names


def _is_stem(model: nn.Module, name: str) -> bool:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    return next(module.children(), None) is None or "stem" in name.rsplit(".", 1)[-1]


def attach_fusion(model: nn.Module, fusion_layer: int, arch: str) -> None:
    """Set ``model.fusion`` (off) on the input of fusion point ``fusion_layer`` (-1 = the last)."""
    points = fusion_points(model, arch)
    index = fusion_layer if fusion_layer >= 0 else len(points) + fusion_layer
    if not 0 <= index < len(points):
        raise ConfigError(
            f"model.fusion_layer={fusion_layer} is outside the {len(points)} stages/blocks of "
            f"{arch} ({', '.join(points)}); use 0..{len(points) - 1} or -1 (before the last)"
        )
    if hasattr(model, "fusion"):
        raise ConfigError(f"{arch} already has an attribute 'fusion'; choose another timm model")
    model.fusion = EmbeddingFusion()
    model.fusion_index = index
    model.fusion_point = points[index]
    model.get_submodule(points[index]).register_forward_pre_hook(model.fusion.pre_hook)
