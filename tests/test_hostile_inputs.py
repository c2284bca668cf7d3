"""Hostile input, second pass (issue 19): each test is one way in that a hostile user found,
or a sibling of it, shut by the mechanism behind it rather than by a special case."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from interlude.artifact import Checkpoint
from interlude.config import load_config
from interlude.errors import ConfigError, shown

REPO = Path(__file__).resolve().parents[1]


def _alias_bomb(levels: int = 9) -> str:
    """~300 characters of YAML that expand to 10**levels values."""
    names = [chr(ord("a") + i) for i in range(levels)]
    parts = [f"&{names[0]} [" + ",".join("x" * 10) + "]"]
    parts += [f"&{name} [" + ",".join([f"*{prev}"] * 10) + "]"
              for prev, name in zip(names, names[1:], strict=False)]
    return "[" + ", ".join(parts) + "]"


# ---------------------------------------------------------------- 1. YAML alias bombs
@pytest.mark.parametrize("key", ["train.run_name", "data.labeled_classes", "data.mean",
                                 "algorithm.name", "train.steps"])
def test_alias_bomb_override_is_refused_at_once(key):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="anchors/aliases .* expand to more than") as info:
        load_config(None, [f"{key}={_alias_bomb()}"])
    assert time.perf_counter() - started < 2 and len(str(info.value)) < 300


def test_alias_bomb_config_file_and_self_reference_are_refused(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"train:\n  run_name: {_alias_bomb()}\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml, line 2: the YAML anchors"):
        load_config(path)
    with pytest.raises(ConfigError, match="refer to themselves"):
        load_config(None, ["train.run_name=&a [*a]"])
    # an alias that stays small is still YAML (merge keys are used in configs)
    small = tmp_path / "small.yaml"
    small.write_text("x: &d {steps: 7}\ntrain:\n  <<: *d\n")
    with pytest.raises(ConfigError, match="unknown config section 'x'"):
        load_config(small)


def test_alias_bomb_on_the_command_line_exits_2_quickly():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "interlude", "config", "show",
                             f"train.run_name={_alias_bomb()}"], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert time.perf_counter() - started < 30


def test_quoted_input_is_bounded_in_time_and_length():
    shared: list = ["x"] * 10
    for _ in range(9):  # 10**10 values once expanded, as a YAML alias bomb builds them
        shared = [shared] * 10
    started = time.perf_counter()
    text = shown(shared)
    assert time.perf_counter() - started < 0.5 and len(text) <= 80
    assert "..." in shown("y" * 10_000) and len(shown("y" * 10_000)) <= 80
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"train.run_name={'z' * 100_000}/.."])
    assert len(str(info.value)) < 400


# ---------------------------------------------------------------- 2. one input-scaling rule
def _digits(n: int = 60):
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images[:n] / 16.0).astype(np.float32)
    y = np.where(np.arange(n) % 3 == 0, digits.target[:n], -1)
    return X, y


@pytest.mark.parametrize("scaled", [
    lambda X: (X * 65535).astype(np.float32),  # float 16-bit data: was clipped to [0, 255]
    lambda X: (X * 65535).astype(np.float64),
    lambda X: (X * 65535).astype(np.uint16),   # integers: refused before, still refused
    lambda X: (X * 300).astype(np.int64),
])
def test_values_above_255_are_refused_by_fit_whatever_the_dtype(scaled):
    from interlude import InterLUDEClassifier

    X, y = _digits()
    clf = InterLUDEClassifier(steps=1, batch_size=4, mu=1, width=4, verbose=0, threads=1,
                              device="cpu")
    with pytest.raises(ValueError, match="rescale"):
        clf.fit(scaled(X), y)
    assert not hasattr(clf, "classes_")


def test_every_entry_point_applies_the_same_rule():
    from interlude import InterLUDEClassifier
    from interlude.inputs import images_for_model, pixel_scale, to_uint8_images

    X, y = _digits()
    big = (X * 65535).astype(np.float32)
    for call in (lambda: to_uint8_images(big), lambda: images_for_model(big, (1, 8, 8))):
        with pytest.raises(ValueError, match=r"\[0, 1\] or \[0, 255\]"):
            call()
    assert pixel_scale((X * 255).astype(np.float32)) == 255.0 and pixel_scale(X) == 1.0
    assert pixel_scale((X * 255).astype(np.uint8)) is None
    assert to_uint8_images(np.full((1, 8, 8), 255.0))[0].max() == 255  # the bound is inclusive
    clf = InterLUDEClassifier(steps=2, batch_size=4, mu=1, width=4, verbose=0, threads=1,
                              device="cpu").fit(X * 255, y)  # fitted on [0, 255] floats
    for method in (clf.predict, clf.predict_proba, lambda Z: clf.score(Z, y),
                   clf.predictor().predict):
        with pytest.raises(ValueError, match="values up to"):
            method(big)
        method(X * 255)


# ---------------------------------------------------------------- 3. disk full inside torch.save
class _FillingDisk:
    """A file handle whose disk fills up after ``room`` bytes, as a real one does mid-write."""

    def __init__(self, handle, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= size
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


def test_torch_save_turns_a_full_disk_into_another_error():
    """The failure mode itself: torch's zip writer reports the ENOSPC as a RuntimeError."""
    import io

    with pytest.raises(RuntimeError):
        torch.save({"w": torch.zeros(10_000)}, _FillingDisk(io.BytesIO(), 2000))


def test_disk_full_inside_a_checkpoint_save_is_one_line_and_exit_2(tiny_overrides, monkeypatch,
                                                                   capsys):
    from interlude import files
    from interlude.cli import main
    from interlude.train import run, run_dir_for

    cfg = load_config(None, [*tiny_overrides, "algorithm.name=supervised"])
    run(cfg, stop_after=6)
    real_fdopen = os.fdopen

    def filling(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        return _FillingDisk(handle, 2000) if "last.pt" in os.readlink(f"/proc/self/fd/{fd}") \
            else handle

    monkeypatch.setattr(files.os, "fdopen", filling)
    code = main(["train", *tiny_overrides, "algorithm.name=supervised", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "last.pt: the disk is full; the previous last.pt is kept" in err[0]
    checkpoints = run_dir_for(cfg) / "checkpoints"
    assert Checkpoint.load(checkpoints / "last.pt").step == 6
    assert list(checkpoints.glob(".*.tmp")) == []


# ---------------------------------------------------------------- 4-5. files written for a user
@pytest.fixture
def digits_run(tiny_overrides):
    from interlude.train import run

    return run(load_config(None, [*tiny_overrides, "algorithm.name=supervised"])).run_dir


def _digit_png(path: Path, index: int = 0) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images[index] * 255 / 16).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def test_predict_out_writes_every_row_of_non_utf8_and_formula_names(digits_run, tmp_path, capsys,
                                                                    monkeypatch):
    import csv

    from interlude.cli import main

    images = tmp_path / "images"
    images.mkdir()
    names = [b"caf\xe9.png", b"=1+1.png", b"+cmd.png", b"@x.png", b"-2.png", b"\tt.png"]
    names += [f"ok{i}.png".encode() for i in range(20)]
    for i, name in enumerate(names):
        _digit_png(Path(os.fsdecode(os.path.join(os.fsencode(images), name))), i)
    out = tmp_path / "preds.csv"
    monkeypatch.chdir(images)  # relative paths: a cell is then the name itself
    assert main(["predict", str(digits_run), ".", "--out", str(out)]) == 0
    rows = list(csv.reader(out.read_text(encoding="utf-8").splitlines()))
    assert len(rows) == 1 + len(names)  # every row, not the 5 before the bad name
    cells = {row[0] for row in rows[1:]}
    assert "caf\\xe9.png" in cells  # the undecodable byte, escaped: the name can be recovered
    assert {"'=1+1.png", "'+cmd.png", "'@x.png", "'-2.png", "'\tt.png"} <= cells
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
               for row in rows for cell in row)
    main(["predict", str(digits_run), "."])  # stdout takes the same text
    assert "caf\\xe9.png" in capsys.readouterr().out


def test_one_csv_writer_neutralises_formulas_in_headers_and_cells(tmp_path):
    from interlude.files import csv_cell, csv_text
    from interlude.inference import FilePredictions, predictions_csv

    predictions = FilePredictions(
        [Path("=HYPERLINK(1).png"), Path("a.png")], np.array(["+cmd", "=1+1", "-x"]),
        np.array([[0.2, 0.5, 0.3], [np.nan, np.nan, np.nan]]), [None, "@boom\r"])
    header, first, second = _parse_csv(predictions_csv(predictions))
    assert header == ["path", "class", "probability", "p_+cmd", "p_=1+1", "p_-x", "error"]
    assert first[:3] == ["'=HYPERLINK(1).png", "'=1+1", "0.500000"] and second[-1] == "'@boom\r"
    assert csv_cell(-1.5) == -1.5 and csv_cell("-1.5") == "'-1.5"  # numbers stay numbers
    assert _parse_csv(csv_text(["a"], [["\rx"], ["+1"], ["ok"]]))[1:] == [["'\rx"], ["'+1"],
                                                                           ["ok"]]


def _parse_csv(text: str) -> list[list[str]]:
    import csv
    import io

    return list(csv.reader(io.StringIO(text, newline="")))


def test_metrics_csv_goes_through_the_same_writer(digits_run):
    """Every CSV row the package writes passes through files.csv_row (grep), and the metrics
    file it writes reads back as the CSV of its columns."""
    rows = [line for path in (REPO / "src" / "interlude").rglob("*.py") if path.name != "files.py"
            for line in path.read_text().splitlines() if ".writerow" in line]
    assert rows and all("csv_row(" in line for line in rows), rows
    header, *body = _parse_csv((digits_run / "metrics.csv").read_text())
    assert header[:2] == ["step", "loss"] and [int(r[0]) for r in body] == [3, 6, 9, 12]


# ---------------------------------------------------------------- the image cache
def _bmp_folders(root: Path) -> None:
    """BMP files (uncompressed: same size whatever the pixels) in two classes + unlabeled."""
    from PIL import Image

    for cls, value in (("a", 10), ("b", 240)):
        (root / "labeled" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), value + i, np.uint8)).save(
                root / "labeled" / cls / f"{i}.bmp")
    (root / "unlabeled").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 100 + i, np.uint8)).save(root / "unlabeled" / f"{i}.bmp")


def _folder_data(root: Path):
    from interlude.data import build_data

    return build_data(load_config(None, [
        "data.name=imagefolder", f"data.labeled_dir={root / 'labeled'}",
        f"data.unlabeled_dir={root / 'unlabeled'}", "data.resolution=8"]).data)


def test_a_file_replaced_with_its_old_size_and_mtime_is_decoded_again(tmp_path):
    _bmp_folders(tmp_path)
    first = _folder_data(tmp_path)
    target, other = tmp_path / "labeled" / "a" / "0.bmp", tmp_path / "labeled" / "b" / "0.bmp"
    before = target.stat()
    time.sleep(0.05)  # past the file system's clock granularity, as any later edit is
    target.write_bytes(other.read_bytes())  # cp b/0.bmp a/0.bmp
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r backup a/0.bmp
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (before.st_size,
                                                                   before.st_mtime_ns)
    again = _folder_data(tmp_path)
    row = list(again.labeled.labels).index(0)  # the first image of class a
    assert first.labeled.images.read([row]).max() == 10
    assert again.labeled.images.read([row]).max() == 240  # the pixels now in the file


def test_planted_lock_links_are_refused_and_write_nothing_outside(tmp_path, image_cache):
    from interlude.errors import DataError
    from interlude.rundir import RunDir, RunDirBusy

    _bmp_folders(tmp_path)
    data = _folder_data(tmp_path)
    del data
    outside = tmp_path / "outside"
    outside.mkdir()
    for lock in (image_cache / "images").glob("*.use.lock"):
        lock.unlink()
        lock.symlink_to(outside / lock.name)
    with pytest.raises(DataError, match="is a symbolic link; a lock file must be a plain file"):
        _folder_data(tmp_path)
    assert list(outside.iterdir()) == []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(outside / "victim")
    with pytest.raises(RunDirBusy, match="symbolic link"):
        RunDir(run_dir).acquire()
    assert list(outside.iterdir()) == []


# ---------------------------------------------------------------- the folder scan
def _too_deep(root: Path) -> Path:
    """A folder whose path is longer than PATH_MAX, made with relative steps, holding an image."""
    from PIL import Image

    fd = os.open(root, os.O_RDONLY)
    depth = 0
    try:
        while len(str(root)) + depth * 201 < 4200:
            os.mkdir("d" * 200, dir_fd=fd)
            child = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, depth = child, depth + 1
        with os.fdopen(os.open("deep.bmp", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd),
                       "wb") as handle:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(handle, format="BMP")
    finally:
        os.close(fd)
    return root.joinpath(*["d" * 200] * depth)


def test_folders_the_scan_cannot_read_are_counted_and_reported(tmp_path, monkeypatch, caplog):
    from interlude.data import folder as folder_module
    from interlude.data import load_raw

    _bmp_folders(tmp_path)
    _too_deep(tmp_path / "unlabeled")
    locked = tmp_path / "unlabeled" / "private"
    locked.mkdir()
    real_scandir = os.scandir

    def scandir(path):  # chmod 000 does not stop root, which runs these tests in CI
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(folder_module.os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="interlude"):
        raw = load_raw(load_config(None, [
            "data.name=imagefolder", f"data.labeled_dir={tmp_path / 'labeled'}",
            f"data.unlabeled_dir={tmp_path / 'unlabeled'}", "data.resolution=8"]).data)
    (note,) = [n for n in raw.notes if "could not be read" in n]
    assert note.startswith("skipped 2 folder(s)/file(s) that could not be read (")
    assert "1 File name too long" in note and "1 Permission denied" in note
    assert "private (Permission denied)" in note and note in caplog.text
    assert len(raw.extra_unlabeled) == 4  # the readable ones are used


def test_a_class_folder_that_cannot_be_listed_says_why(tmp_path, monkeypatch):
    from interlude.data import folder as folder_module
    from interlude.data import load_raw
    from interlude.errors import DataError

    _bmp_folders(tmp_path)
    real_scandir = os.scandir
    monkeypatch.setattr(folder_module.os, "scandir", lambda path: (
        (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(path)))
        if Path(path).name == "b" else real_scandir(path)))
    with pytest.raises(DataError, match=r"hold no images .* that could be read \(b: Permission"):
        load_raw(load_config(None, [
            "data.name=imagefolder", f"data.labeled_dir={tmp_path / 'labeled'}",
            f"data.unlabeled_dir={tmp_path / 'unlabeled'}"]).data)


# ---------------------------------------------------------------- weights read back are checked
@pytest.fixture
def safetensors_export(digits_run, tmp_path):
    from interlude.export import export_run

    return export_run(digits_run, "safetensors", str(tmp_path / "export")).parent


def _edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    key = next(k for k in weights if k.endswith("weight") and weights[k].dim() > 1)
    edit(weights, key)
    save_file(weights, str(folder / "model.safetensors"))


@pytest.mark.parametrize("edit, message", [
    (lambda w, k: w[k].view(-1)[0].fill_(float("nan")), r"NaN/inf in 1 tensor\(s\)"),
    (lambda w, k: w.__setitem__(k, w[k].round().long()), "is int64, the network needs float32"),
    (lambda w, k: w.__setitem__(k, w[k][:1]), "has shape"),
])
def test_exported_weights_are_checked_as_saving_checks_them(safetensors_export, edit, message):
    import interlude
    from interlude.export import ExportError

    _edit_weights(safetensors_export, edit)
    with pytest.raises(ExportError, match=message) as info:
        interlude.load(safetensors_export)
    assert "\n" not in str(info.value)


def test_crafted_sidecar_sizes_allocate_nothing_and_a_wrong_format_is_an_export_error(
        safetensors_export, tmp_path):
    import json

    import interlude
    from interlude.export import ExportError

    sidecar_path = safetensors_export / "interlude.json"
    sidecar = json.loads(sidecar_path.read_text())
    for width, message in ((10**6, r"model.width=1000000 is out of range"),
                           (4096, "has shape")):  # the largest width the schema accepts
        sidecar_path.write_text(json.dumps({**sidecar, "model": {**sidecar["model"],
                                                                  "width": width}}))
        started = time.perf_counter()  # 4096 channels: gigabytes of weights if built
        with pytest.raises(ExportError, match=message):
            interlude.load(safetensors_export)
        assert time.perf_counter() - started < 30
    for fmt in ("torchscript", "onnx"):
        sidecar_path.write_text(json.dumps({**sidecar, "format": fmt}))
        with pytest.raises(ExportError, match="not a loadable|needs the 'onnx"):
            interlude.load(safetensors_export, allow_code=True)
    sidecar_path.write_text(" " * (17 << 20))
    with pytest.raises(ExportError, match="a sidecar is a few KB"):
        interlude.load(safetensors_export)


def test_a_checkpoint_with_nan_or_integer_weights_does_not_load(digits_run, tmp_path,
                                                                 tiny_overrides):
    from interlude.errors import CheckpointError
    from interlude.train import run

    state = torch.load(digits_run / "checkpoints" / "last.pt", weights_only=True)
    key = next(iter(state["ema"]))
    state["ema"][key] = state["ema"][key].clone().fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"NaN/inf in 1 tensor\(s\), e.g. ema\."):
        Checkpoint.load(tmp_path / "nan.pt")
    state = torch.load(digits_run / "checkpoints" / "last.pt", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][key] = state["model"][key].round().to(torch.int32)
    torch.save(state, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match="is int32, the network needs float32"):
        Checkpoint.load(tmp_path / "int.pt").build_model("raw")
    (digits_run / "checkpoints" / "last.pt").write_bytes((tmp_path / "int.pt").read_bytes())
    with pytest.raises(CheckpointError, match="does not match this model: .* is int32"):
        run(load_config(None, [*tiny_overrides, "algorithm.name=supervised"]), resume=True)


# ---------------------------------------------------------------- a run directory knows its files
def test_a_cache_folder_inside_the_run_folder_is_kept_and_not_mistaken_for_a_run(tmp_path):
    from interlude.train import run

    _bmp_folders(tmp_path)
    run_dir = tmp_path / "runs" / "mine"
    cfg = load_config(None, [
        "data.name=imagefolder", f"data.labeled_dir={tmp_path / 'labeled'}",
        f"data.unlabeled_dir={tmp_path / 'unlabeled'}", "data.resolution=8",
        f"data.cache_dir={run_dir / 'cache'}", "algorithm.name=supervised", "model.width=4",
        "train.batch_size=4", "train.mu=1", "train.steps=2", "train.eval_interval=2",
        "train.checkpoint_interval=2", "train.progress=false", "train.device=cpu",
        f"train.out_dir={tmp_path / 'runs'}", "train.run_name=mine"])
    assert run(cfg).finished  # the cache it creates inside is not "a folder of other files"
    entries = sorted(p.name for p in (run_dir / "cache" / "images").glob("*.u8"))
    (run_dir / "notes.txt").write_text("mine")
    assert run(cfg, overwrite=True).finished
    assert sorted(p.name for p in (run_dir / "cache" / "images").glob("*.u8")) == entries
    assert (run_dir / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="already holds a run"):
        run(cfg)


# ---------------------------------------------------------------- "bookkeeping" = same weights
_CHANGED: dict[str, object] = {  # a value other than the base run's, for every bookkeeping key
    "data.data_dir": "elsewhere", "data.download": True, "data.cache": False,
    "data.cache_dir": "SECOND_CACHE", "data.decode_workers": 3, "train.eval_interval": 3,
    "train.log_interval": 2, "train.checkpoint_interval": 1, "train.eval_batch_size": 3,
    "train.num_workers": 1, "train.out_dir": "OTHER_OUT", "train.run_name": "moved",
    "train.tensorboard": True, "train.progress": True,
}


def _base(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return ["data.name=imagefolder", f"data.labeled_dir={tmp_path / 'labeled'}",
            f"data.unlabeled_dir={tmp_path / 'unlabeled'}", "data.resolution=8",
            "data.val_per_class=1", "algorithm.name=fixmatch", "model.width=4",
            "train.batch_size=2", "train.mu=2", "train.steps=6", "train.eval_interval=2",
            "train.log_interval=1", "train.checkpoint_interval=2", "train.progress=false",
            "train.device=cpu", "train.threads=1", f"train.out_dir={tmp_path / 'runs'}",
            f"train.run_name={name}", *extra]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = Checkpoint.load(run_dir / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in state.model.items()},
            **{f"ema.{k}": v for k, v in (state.ema or {}).items()}}


@pytest.mark.parametrize("augment_on", ["device", "workers"])
def test_a_resume_under_any_changed_bookkeeping_value_ends_with_the_same_weights(tmp_path,
                                                                                 augment_on):
    import shutil

    from interlude.config import BOOKKEEPING_KEYS
    from interlude.train import run

    assert set(_CHANGED) == BOOKKEEPING_KEYS  # a new bookkeeping key must be tested here
    _bmp_folders(tmp_path)
    keys = ["train.num_workers"] if augment_on == "workers" else sorted(set(_CHANGED) - {
        "train.num_workers"})
    mode = f"train.augment_on={augment_on}"
    reference = _weights(run(load_config(None, _base(tmp_path, "reference", mode))).run_dir)
    for key in keys:
        name = key.replace(".", "-")
        run(load_config(None, _base(tmp_path, name, mode)), stop_after=2)
        value = str(_CHANGED[key]).replace("SECOND_CACHE", str(tmp_path / "cache2")).replace(
            "OTHER_OUT", str(tmp_path / "other"))
        changed = _base(tmp_path, name, mode, f"{key}={value}")
        if key in ("train.out_dir", "train.run_name"):  # the run moved: resume it where it is now
            target = Path(value) / name if key == "train.out_dir" else tmp_path / "runs" / value
            shutil.copytree(tmp_path / "runs" / name, target)
        result = run(load_config(None, changed), resume=True)
        weights = _weights(result.run_dir)
        differing = [k for k in reference if not torch.equal(reference[k], weights[k])]
        assert differing == [], f"{key}={value}: {len(differing)} tensors differ"


def test_a_resume_with_other_threads_warns_that_it_is_not_bit_exact(tmp_path, caplog):
    from interlude.config import ROUNDING_KEYS, diff
    from interlude.train import run

    assert {"train.threads", "train.device"} == ROUNDING_KEYS
    _bmp_folders(tmp_path)
    run(load_config(None, _base(tmp_path, "t")), stop_after=2)
    try:
        with caplog.at_level("WARNING", logger="interlude"):
            result = run(load_config(None, _base(tmp_path, "t", "train.threads=2")), resume=True)
    finally:
        torch.set_num_threads(1)  # conftest's setting for the other tests
    assert result.finished
    assert "resumed with other threads than step 2 was trained with (threads 1 -> 2)" in caplog.text
    assert "no longer bit-exact" in caplog.text
    # a sweep or report still sees one experiment
    assert diff(load_config(None, ["train.threads=1"]), load_config(None, ["train.threads=2"])) == []


# ---------------------------------------------------------------- found by the re-probe
def test_deeply_nested_yaml_and_json_are_one_line_errors(tmp_path, safetensors_export):
    import interlude
    from interlude.export import ExportError

    deep = "[" * 20_000 + "]" * 20_000
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(None, [f"train.run_name={deep}"])
    path = tmp_path / "deep.yaml"
    path.write_text(f"train:\n  run_name: {deep}\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)
    (safetensors_export / "interlude.json").write_text(deep)
    with pytest.raises(ExportError, match="not valid JSON .*nested too deeply"):
        interlude.load(safetensors_export)


# ---------------------------------------------------------------------- fresh-eyes re-probe
@pytest.mark.parametrize("override", [
    "data.resolution=100000", "model.width=100000000", "train.cosine_cycles=1e308",
    "train.batch_size=1000000", "train.mu=100000", "algorithm.lambda_dc=1e300",
])
def test_sizes_beyond_any_machine_are_refused_by_the_schema(override):
    """Every numeric key has an upper bound: a value no run can use is a one-line config error
    before anything is allocated (these were tracebacks from numpy/torch or ``math``)."""
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


def test_a_failed_allocation_is_one_line_and_exit_2(monkeypatch, capsys):
    import interlude.cli as cli

    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 3600 bytes")

    for error in (allocate, lambda args: np.empty(2**62, dtype=np.uint8)):
        args = cli.parse_args(["config", "keys"])
        args.func = error
        monkeypatch.setattr(cli, "parse_args", lambda argv, args=args: args)
        assert cli.main([]) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("error: out of memory") and "\n" not in message
        assert "train.batch_size" in message


@pytest.mark.parametrize("device", ["mps", "cuda", "cuda:1"])
def test_a_device_this_machine_lacks_is_a_config_error(device, monkeypatch):
    from interlude.train import resolve_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if device == "cuda:1":  # one GPU present: the second does not exist
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    elif device == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"train.device={device} but"):
        resolve_device(device)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_writing_over_something_that_is_not_a_file_is_refused(tmp_path, kind):
    """The atomic rename would replace a device node, a FIFO or a folder with a file."""
    from interlude.files import WriteError, write_atomic

    target = tmp_path / "target"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    with pytest.raises(WriteError, match="not a regular file"):
        write_atomic(target, b"rows")
    assert (target.is_fifo() if kind == "fifo" else target.is_dir())


def test_an_unwritable_folder_names_the_target_not_a_temporary(tmp_path, monkeypatch):
    from interlude import files

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".p.csv.x.tmp"))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(files.WriteError, match=r"could not write .*p\.csv'?: Read-only file "
                                              r"system; nothing was written"):
        files.write_atomic(tmp_path / "p.csv", b"x")


def test_predict_out_never_replaces_the_users_files(digits_run, tmp_path, capsys):
    from interlude.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        _digit_png(images / f"{i}.png", i)
    kept = (images / "0.png").read_bytes()
    config = (digits_run / "config.yaml").read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for out, reason in ((images / "0.png", "is one of the images"),
                        (digits_run / "config.yaml", "inside the run folder"),
                        (digits_run / "checkpoints" / "last.pt", "inside the run folder"),
                        (notes, "is not a predictions CSV")):
        assert main(["predict", str(digits_run), str(images), "--out", str(out)]) == 2
        assert reason in capsys.readouterr().err
    assert (images / "0.png").read_bytes() == kept and notes.read_text() == "mine"
    assert (digits_run / "config.yaml").read_bytes() == config
    out = tmp_path / "preds.csv"
    for _ in range(2):  # a previous predictions CSV is replaced, as users expect
        assert main(["predict", str(digits_run), str(images), "--out", str(out)]) == 0
    assert out.read_text().startswith("path,class,probability,")


def test_string_labels_keep_the_integer_minus_one_unlabeled():
    from interlude.estimator import _as_labels, _unlabeled_mask

    y = _as_labels(["cat", "dog", -1, "cat", -1])
    assert _unlabeled_mask(y).tolist() == [False, False, True, False, True]
    assert sorted(set(y[~_unlabeled_mask(y)])) == ["cat", "dog"]  # no class "-1"
    with pytest.raises(ValueError, match="string '-1'"):
        _as_labels(np.array(["cat", "dog", "-1"]))
    assert _as_labels([0, 1, -1]).dtype.kind == "i"
