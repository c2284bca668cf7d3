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
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from interlude.errors import InterludeError
from interlude.inference import Predictor, checkpoint_path, model_from_checkpoint, primary_weights

EXPORT_VERSION = 1
SIDECAR = "interlude.json"
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}
ONNX_OPSET = 17


class ExportError(InterludeError, ValueError):
    """An export cannot be written or read (missing optional package, unknown folder)."""


# ----------------------------------------------------------------------------- writing
def export_run(run_dir: Path, format: str = "safetensors", out: str | None = None,
               checkpoint: str = "last") -> Path:
    """Export ``RUN_DIR/checkpoints/<checkpoint>.pt``; returns the model file written."""
    from interlude.train.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    state = load_checkpoint(checkpoint_path(run_dir, checkpoint))
    folder = Path(out) if out is not None else run_dir / "export" / format
    return export_checkpoint(state, format, folder, source=f"{run_dir}/{checkpoint}.pt")


def export_checkpoint(state: dict[str, Any], format: str, folder: Path,
                      source: str | None = None) -> Path:
    """Write the primary (EMA) model of a checkpoint dict and its sidecar into ``folder``."""
    if format not in FILES:
        raise ExportError(f"unknown export format '{format}'; use one of {', '.join(FILES)}")
    which = primary_weights(state)
    model = model_from_checkpoint(state, which).cpu()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILES[format]
    example = torch.zeros(2, *state["meta"]["image_shape"])
    {"safetensors": _save_safetensors, "onnx": _save_onnx, "torchscript": _save_torchscript}[
        format
    ](model, example, path)
    sidecar = _sidecar(state, format, which, source)
    (folder / SIDECAR).write_text(json.dumps(sidecar, indent=1))
    return path


def _sidecar(state: dict[str, Any], format: str, which: str, source: str | None) -> dict:
    from interlude.nets import default_arch

    meta, config = state["meta"], state["config"]
    model_cfg = dict(config["model"])
    channels, height, width = meta["image_shape"]
    if model_cfg["arch"] == "auto":  # resolve now: the dataset name is not kept in the export
        model_cfg["arch"] = default_arch(config["data"]["name"], height)
    model_cfg["pretrained"] = None
    return {
        "interlude_export_version": EXPORT_VERSION,
        "format": format,
        "file": FILES[format],
        "weights": which,
        "step": int(state.get("step", 0)),
        "source": source,
        "model": model_cfg,
        "num_classes": int(meta["num_classes"]),
        "class_names": [str(c) for c in meta["class_names"]],
        "image_shape": [int(channels), int(height), int(width)],
        "resolution": [int(height), int(width)],
        "mean": [float(v) for v in meta["mean"]],
        "std": [float(v) for v in meta["std"]],
        "input": "uint8 (N, C, H, W) images -> x / 255 -> (x - mean) / std, float32",
        "output": "logits (N, num_classes); softmax gives class probabilities",
    }


def _save_safetensors(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    save_file = _require("safetensors.torch", "safetensors").save_file
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "interlude"})


def _save_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices in recent torch
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path))


def _save_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    _require("onnx", "onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript-based exporter: the dynamo one needs the separate `onnxscript` package
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=["images"],
            output_names=["logits"], opset_version=ONNX_OPSET,
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )


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


def load(path: str | Path) -> Predictor:
    """Load an export (its folder, or the model file inside it) as a ready-to-use predictor.

    The result has ``predict`` / ``predict_proba`` taking uint8 or float arrays or image paths,
    ``classes_`` and ``model`` (the network proper: normalised float batches in, logits out).
    """
    folder, sidecar = _find_sidecar(Path(path))
    model_file = folder / sidecar["file"]
    if not model_file.is_file():
        raise ExportError(f"{model_file} is missing (named in {folder / SIDECAR})")
    loader = {"safetensors": _load_safetensors, "onnx": _load_onnx,
              "torchscript": _load_torchscript}.get(sidecar["format"])
    if loader is None:
        raise ExportError(f"{folder / SIDECAR} names an unknown format '{sidecar['format']}'")
    return Predictor(
        model=loader(model_file, sidecar),
        classes_=np.array(sidecar["class_names"]),
        image_shape=tuple(sidecar["image_shape"]),  # type: ignore[arg-type]
        mean=tuple(sidecar["mean"]),
        std=tuple(sidecar["std"]),
        metadata=sidecar,
    )


def _find_sidecar(path: Path) -> tuple[Path, dict[str, Any]]:
    folder = path if path.is_dir() else path.parent
    file = folder / SIDECAR
    if not path.exists():
        raise ExportError(f"no export at {path}")
    if not file.is_file():
        raise ExportError(
            f"{folder} holds no {SIDECAR}: point interlude.load at a folder written by "
            "`interlude export` (or the model file inside it)"
        )
    sidecar = json.loads(file.read_text())
    if sidecar.get("interlude_export_version") != EXPORT_VERSION:
        raise ExportError(f"{file} is not an interlude export of version {EXPORT_VERSION}")
    if path.is_file() and path.name != sidecar["file"]:
        raise ExportError(f"{file} describes {sidecar['file']}, not {path.name}")
    return folder, sidecar


def _load_safetensors(path: Path, sidecar: dict[str, Any]) -> nn.Module:
    from interlude.config import ModelConfig
    from interlude.nets import build_net

    load_file = _require("safetensors.torch", "safetensors").load_file
    channels, height, _ = sidecar["image_shape"]
    model = build_net(ModelConfig(**sidecar["model"]), sidecar["num_classes"], channels, height)
    model.load_state_dict(load_file(str(path)))
    model.fusion.strength = 0.0
    return model.eval()


def _load_torchscript(path: Path, sidecar: dict[str, Any]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


def _load_onnx(path: Path, sidecar: dict[str, Any]) -> OnnxModel:
    return OnnxModel(path)
