"""Using a trained run: weights-only checkpoints, ``interlude eval|predict|export``, ``load``."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import interlude
from interlude import InterLUDEClassifier
from interlude.artifact import Checkpoint
from interlude.cli import main
from interlude.export import ExportError, export_run
from interlude.inference import Predictor

RUN_OVERRIDES = [
    "data.name=digits", "data.val_per_class=2", "model.width=8", "train.batch_size=8",
    "train.mu=2", "train.steps=8", "train.eval_interval=4", "train.log_interval=4",
    "train.checkpoint_interval=4", "train.progress=false", "train.device=cpu", "train.threads=1",
]
FORMATS = {
    "safetensors": ["safetensors"],
    "torchscript": [],
    "onnx": ["onnx", "onnxruntime"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny CLI run with a validation set, so it has both last.pt and best.pt."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *RUN_OVERRIDES, f"train.out_dir={out}", "train.run_name=tiny"]) == 0
    return out / "tiny"


@pytest.fixture(scope="module")
def images():
    """Ten digits as uint8 (N, 1, 8, 8), the way the digits loader stores them."""
    raw = load_digits().images[:10]
    return np.round(raw * (255.0 / 16.0)).astype(np.uint8)[:, None]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("images")
    paths = [str(folder / f"digit{i}.png") for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image[0]).save(path)
    return paths


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An estimator trained into a kept run dir, whose in-memory EMA model the exports match."""
    bunch = load_digits()
    y = np.where(np.arange(len(bunch.target)) % 20 == 0, bunch.target, -1)[:300]
    out = tmp_path_factory.mktemp("estimator") / "run"
    clf = InterLUDEClassifier(steps=6, batch_size=8, mu=2, width=4, verbose=0, threads=1,
                              device="cpu", out_dir=str(out))
    return clf.fit(bunch.images[:300] / 16.0, y)


def _require(modules: list[str]) -> None:
    for module in modules:
        pytest.importorskip(module, reason=f"the `export` extra's {module} is not installed")


@pytest.mark.parametrize("name", ["last", "best"])
def test_checkpoints_load_with_weights_only(run_dir, name):
    state = torch.load(run_dir / "checkpoints" / f"{name}.pt", weights_only=True)
    assert state["meta"]["image_shape"] == [1, 8, 8]
    assert state["ema"] is not None and state["config"]["train"]["steps"] == 8


def test_estimator_run_dir_checkpoint_is_weights_only(fitted):
    state = torch.load(fitted.run_dir_ / "checkpoints" / "last.pt", weights_only=True)
    for key, value in state["ema"].items():
        assert torch.equal(value, fitted.model_.state_dict()[key].cpu())


def test_eval_cli_reports_the_run_metrics(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["last"]["test/ema/top1"])
    assert len(result["confusion"]) == 10
    assert main(["eval", str(run_dir), "--checkpoint", "best", "--split", "val"]) == 0
    assert "balanced_acc:" in capsys.readouterr().out


def test_predict_cli_writes_csv(run_dir, image_files, images, tmp_path):
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), *image_files, "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "class", "probability", *(f"p_{c}" for c in range(10)), "error"]
    assert [r[0] for r in rows[1:]] == image_files
    model = Checkpoint.load(run_dir / "checkpoints" / "last.pt").build_model()
    reference = Predictor(
        model, np.array([str(c) for c in range(10)]), (1, 8, 8),
        *_norm(run_dir),
    ).predict_proba(images)
    for row, probabilities in zip(rows[1:], reference, strict=True):
        assert row[1] == str(probabilities.argmax())
        assert float(row[2]) == pytest.approx(probabilities.max(), abs=1e-6)
        np.testing.assert_allclose([float(p) for p in row[3:-1]], probabilities, atol=1e-6)
        assert row[-1] == ""


def _norm(run_dir):
    meta = Checkpoint.load(run_dir / "checkpoints" / "last.pt").meta
    return meta.mean, meta.std


def test_predict_cli_stdout_and_missing_file(run_dir, image_files, capsys):
    assert main(["predict", str(run_dir), image_files[0]]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 and rows[1][0] == image_files[0]
    assert main(["predict", str(run_dir), "nope.png"]) == 2
    assert "error: image not found: nope.png" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_matches_in_memory_ema_model(fitted, images, image_files, tmp_path, fmt):
    _require(FORMATS[fmt])
    path = export_run(fitted.run_dir_, fmt, str(tmp_path / fmt), "last")
    loaded = interlude.load(path, allow_code=fmt == "torchscript")
    sidecar = json.loads((tmp_path / fmt / "interlude.json").read_text())
    assert sidecar["weights"] == "ema" and sidecar["resolution"] == [8, 8]
    assert list(loaded.classes_) == [str(c) for c in fitted.classes_]
    meta = fitted.checkpoint_.meta
    assert loaded.mean == meta.mean and loaded.std == meta.std
    x = torch.from_numpy(images.astype(np.float32) / 255.0)
    x = (x - torch.tensor(meta.mean).view(1, -1, 1, 1)) / torch.tensor(meta.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = fitted.model_(x)
        got = loaded.model(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(loaded.predict_proba(images), fitted.predict_proba(images),
                               atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(image_files), loaded.predict(images))


def test_export_cli_default_folder_and_load_errors(run_dir, capsys, tmp_path):
    _require(FORMATS["safetensors"])
    assert main(["export", str(run_dir)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(run_dir / "export" / "safetensors" / "model.safetensors")
    sidecar = json.loads((run_dir / "export" / "safetensors" / "interlude.json").read_text())
    assert sidecar["source"] == str(run_dir / "checkpoints" / "last.pt")  # the file it came from
    assert interlude.load(run_dir / "export" / "safetensors").predict(
        np.zeros((1, 8, 8), np.uint8)
    ).shape == (1,)
    with pytest.raises(ExportError, match="holds no interlude.json"):
        interlude.load(tmp_path)
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_estimator_export_method(fitted, images, tmp_path):
    loaded = interlude.load(fitted.export(tmp_path / "ts", "torchscript"), allow_code=True)
    np.testing.assert_allclose(loaded.predict_proba(images), fitted.predict_proba(images),
                               atol=1e-5)


def test_estimator_run_dir_works_with_predict_but_not_eval(fitted, image_files, capsys):
    assert main(["predict", str(fitted.run_dir_), *image_files[:2]]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert [r[1] for r in rows[1:]] == list(fitted.predict(image_files[:2]).astype(str))
    assert main(["eval", str(fitted.run_dir_)]) == 2
    assert "trained from arrays with InterLUDEClassifier" in capsys.readouterr().err
