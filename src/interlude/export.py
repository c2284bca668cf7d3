"""Export a trained model for use outside training, and load it back with ``interlude.load``.

``interlude export RUN_DIR --format safetensors|onnx|torchscript`` writes the EMA network (the raw
one when the run had no EMA) in eval mode with embedding fusion off, so an exported prediction
never depends on the other images in the batch. The model file takes *normalised* float
``(N, C, H, W)`` batches; the preprocessing that produces them (resolution, channels, mean/std)
and the class names are stored beside it in ``interlude.json``, because a model without its
preprocessing silently gives wrong answers.

Layout of an export folder (default ``RUN_DIR/export/<format>/``)::

    model.safetensors | model.onnx | model.pt (TorchScript)
    interlude.json    format, file, arch + model config, class names, image shape, mean/std

Loading never runs code from the files unless asked: safetensors holds tensors only and is rebuilt
into the network by :func:`interlude.artifact.build_inference_net`; ONNX is a graph run by
onnxruntime; TorchScript is a program, so :func:`load` opens it only with ``allow_code=True``.
The sidecar is read as hostile input: malformed JSON, a model file outside the folder, class
names that do not match the outputs or broken channel statistics are one-line
:class:`ExportError` messages.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from interlude.artifact import Checkpoint, RunMeta, build_inference_net, write_atomic
from interlude.errors import InterludeError, shown
from interlude.files import parse_json
from interlude.inference import Predictor
from interlude.rundir import RunDir

EXPORT_VERSION = 1
SIDECAR = "interlude.json"
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}
ONNX_OPSET = 17
MAX_SIDECAR_BYTES = 16 << 20
"""A sidecar larger than this is refused before it is read (class names of 1e6 classes fit)."""


class ExportError(InterludeError, ValueError):
    """An export cannot be written or read (missing optional package, unknown or damaged folder)."""


# ----------------------------------------------------------------------------- writing
def export_run(run_dir: Path, format: str = "safetensors", out: str | None = None,
               checkpoint: str = "last") -> Path:
    """Export ``RUN_DIR/checkpoints/<checkpoint>.pt``; returns the model file written."""
    run = RunDir(run_dir)
    path = run.checkpoint(checkpoint)
    state = Checkpoint.load(path)
    folder = Path(out) if out is not None else run.path / "export" / format
    return export_checkpoint(state, format, folder, source=str(path))


def export_checkpoint(state: Checkpoint, format: str, folder: Path,
                      source: str | None = None) -> Path:
    """Write the primary (EMA) model of a checkpoint and its sidecar into ``folder``."""
    if format not in FILES:
        raise ExportError(f"unknown export format '{format}'; use one of {', '.join(FILES)}")
    model = state.build_model(source=source or "checkpoint").cpu()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILES[format]
    example = torch.zeros(2, *state.meta.image_shape)
    {"safetensors": _save_safetensors, "onnx": _save_onnx, "torchscript": _save_torchscript}[
        format
    ](model, example, path)
    write_atomic(folder / SIDECAR, json.dumps(_sidecar(state, format, source), indent=1))
    return path


def _sidecar(state: Checkpoint, format: str, source: str | None) -> dict:
    meta = state.meta
    channels, height, width = meta.image_shape
    return {
        "interlude_export_version": EXPORT_VERSION,
        "format": format,
        "file": FILES[format],
        "weights": state.primary,
        "step": state.step,
        "source": source,
        "model": {**state.config.model.__dict__, "pretrained": False},
        "num_classes": meta.num_classes,
        "class_names": list(meta.class_names),
        "image_shape": [channels, height, width],
        "resolution": [height, width],
        "mean": list(meta.mean),
        "std": list(meta.std),
        "interpolation": meta.interpolation,
        "input": f"uint8 (N, C, H, W) images ({meta.interpolation} resize) -> x / 255 -> "
                 "(x - mean) / std, float32",
        "output": "logits (N, num_classes); softmax gives class probabilities",
    }


def _save_safetensors(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    save = _require("safetensors.torch", "safetensors").save
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, save(state, metadata={"format": "interlude"}))


def _save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices in recent torch
        traced = torch.jit.trace(model, example)
        write_atomic(path, lambda handle: torch.jit.save(traced, handle))


def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    _require("onnx", "onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: the dynamo one needs the separate `onnxscript` package
        write_atomic(path, lambda handle: torch.onnx.export(
            model, (example,), handle, dynamo=False, input_names=["images"],
            output_names=["logits"], opset_version=ONNX_OPSET,
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        ))


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f"this needs the '{package}' package: pip install '{package}' "
            "(or pip install 'interlude[export]')"
        ) from None


# ----------------------------------------------------------------------------- loading
class OnnxModel:
    """An onnxruntime session called like a module: normalised float tensor in, logits out."""

    def __init__(self, path: Path) -> None:
        ort = _require("onnxruntime", "onnxruntime")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32, copy=False)
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)


def load(path: str | Path, *, allow_code: bool = False) -> Predictor:
    """Load an export (its folder, or the model file inside it) as a ready-to-use predictor.

    The result has ``predict`` / ``predict_proba`` taking uint8 or float arrays or image paths,
    ``classes_`` and ``model`` (the network proper: normalised float batches in, logits out).
    safetensors and ONNX exports load without running code from the files. A TorchScript file
    is a program: loading it executes code stored in it, so it is refused unless
    ``allow_code=True`` (only for files you trust).
    """
    folder, sidecar = read_sidecar(Path(path))
    model_file = folder / sidecar["file"]
    if sidecar["format"] == "torchscript" and not allow_code:
        raise ExportError(
            f"{model_file} is TorchScript: loading it executes code stored in the file; pass "
            "allow_code=True if you trust it, or export to safetensors/onnx"
        )
    meta = sidecar["meta"]
    loader = {"safetensors": _load_safetensors, "onnx": _load_onnx,
              "torchscript": _load_torchscript}[sidecar["format"]]
    model = loader(model_file, sidecar)
    _check_outputs(model, meta, model_file)
    return Predictor(
        model=model, classes_=np.array(meta.class_names), image_shape=meta.image_shape,
        mean=meta.mean, std=meta.std, metadata=sidecar["raw"], interpolation=meta.interpolation,
    )


def read_sidecar(path: Path) -> tuple[Path, dict[str, Any]]:
    """The export folder and its validated sidecar: ``format``, ``file``, ``meta`` (RunMeta),
    ``model`` (ModelConfig) and ``raw`` (the JSON as read)."""
    from interlude.config import config_from_dict

    if not path.exists():
        raise ExportError(f"no export at {path}")
    folder = path if path.is_dir() else path.parent
    file = folder / SIDECAR
    if not file.is_file():
        raise ExportError(
            f"{folder} holds no {SIDECAR}: point interlude.load at a folder written by "
            "`interlude export` (or the model file inside it)"
        )
    if file.stat().st_size > MAX_SIDECAR_BYTES:
        raise ExportError(f"{file} is {file.stat().st_size:,} bytes; a sidecar is a few KB "
                          "(refusing to read it): re-export the model")
    try:
        raw = parse_json(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportError(f"{file} is not valid JSON ({exc}); re-export the model") from None
    if not isinstance(raw, dict) or raw.get("interlude_export_version") != EXPORT_VERSION:
        raise ExportError(f"{file} is not an interlude export of version {EXPORT_VERSION}")
    format = raw.get("format")
    if format not in FILES:
        raise ExportError(f"{file} names an unknown format {shown(format)}; expected one of "
                          f"{', '.join(FILES)}")
    name = raw.get("file")
    if not isinstance(name, str) or name != Path(name).name or name in ("", ".", ".."):
        raise ExportError(f"{file}: the model file {shown(name)} must be a plain file name inside "
                          f"{folder} (no folders, '..' or absolute paths)")
    model_file = folder / name
    if model_file.is_symlink() or (model_file.exists() and not model_file.resolve().is_relative_to(
            folder.resolve())):
        raise ExportError(f"{model_file} points outside {folder}; refusing to load it")
    if not model_file.is_file():
        raise ExportError(f"{model_file} is missing (named in {file})")
    if path.is_file() and path.name not in (name, SIDECAR):
        raise ExportError(f"{file} describes {name}, not {path.name}")
    try:
        meta = RunMeta.from_dict(raw, str(file))
        model = config_from_dict({"model": raw.get("model")}).model if isinstance(
            raw.get("model"), dict) else None
    except InterludeError as exc:
        raise ExportError(str(exc)) from None
    if format == "safetensors" and (model is None or model.arch == "auto"):
        raise ExportError(f"{file}: 'model' must give the network's config (a resolved arch)")
    return folder, {"format": format, "file": name, "meta": meta, "model": model, "raw": raw}


def _check_outputs(model, meta: RunMeta, model_file: Path) -> None:
    """One forward of a blank batch: the outputs must be one logit per class name."""
    channels, height, width = meta.image_shape
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, channels, height, width))
    except Exception as exc:  # a graph that does not take this input shape fails in many ways
        raise ExportError(f"{model_file} does not take {meta.image_shape} images: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}"
                          ) from None
    if tuple(logits.shape) != (1, meta.num_classes):
        raise ExportError(
            f"{model_file} gives outputs of shape {tuple(logits.shape)[1:]} but its sidecar names "
            f"{meta.num_classes} classes; the export folder is inconsistent: re-export"
        )


def _load_safetensors(path: Path, sidecar: dict[str, Any]) -> nn.Module:
    load_file = _require("safetensors.torch", "safetensors").load_file
    try:
        weights = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ExportError(f"{path} is not a readable safetensors file ({_first_line(exc)}); does "
                          f"'format' in {SIDECAR} match the file? re-export the model") from None
    try:
        return build_inference_net(sidecar["model"], sidecar["meta"], weights, str(path))
    except InterludeError as exc:
        raise ExportError(str(exc)) from None


def _load_torchscript(path: Path, sidecar: dict[str, Any]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # not TorchScript (another format, damaged): torch's own types
            raise ExportError(f"{path} is not a loadable TorchScript file ({type(exc).__name__}: "
                              f"{_first_line(exc)}); does 'format' in {SIDECAR} match the file? "
                              "re-export the model") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return shown(text.splitlines()[0] if text else type(exc).__name__, 160)


def _load_onnx(path: Path, sidecar: dict[str, Any]) -> OnnxModel:
    try:
        return OnnxModel(path)
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime raises its own types for damaged graphs
        raise ExportError(f"{path} is not a loadable ONNX model ({_first_line(exc)}); does "
                          f"'format' in {SIDECAR} match the file? re-export the model") from None
