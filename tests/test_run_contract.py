"""The run contract: one owner per run directory, nothing mixed, lost or executed.

Each test is one failure the contract rules out: two runs in one folder, an ``--overwrite`` that
keeps old files, a refused resume that already wrote, a "last good" checkpoint holding inf, a
metrics trim torn by ``kill -9``, wrong exit codes, a full disk, and files read back without
validation.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from interlude.artifact import Checkpoint, NonFiniteState, WriteError, non_finite_entries
from interlude.cli import main
from interlude.config import load_config
from interlude.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from interlude.rundir import RunDir, RunDirBusy
from interlude.train import run, run_dir_for
from interlude.train.logger import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _cfg(tiny_overrides, *extra: str):
    return load_config(None, [*tiny_overrides, "algorithm.name=supervised", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interlude", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _spawn_training(tiny_overrides, *extra: str) -> subprocess.Popen:
    """A CLI training that runs until stopped (many steps, a row logged every step)."""
    overrides = [o for o in tiny_overrides if not o.startswith(("train.steps", "train.log_int"))]
    command = [sys.executable, "-m", "interlude", "train", *overrides,
               "algorithm.name=supervised", "train.steps=100000", "train.log_interval=1",
               "train.checkpoint_interval=100000", "train.eval_interval=100000", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for_rows(path: Path, process: subprocess.Popen, rows: int = 2) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= rows:
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.stderr.read()}")
        time.sleep(0.1)
    process.kill()
    raise AssertionError("training did not start logging within 90 s")


# ---------------------------------------------------------------- 1. one owner per run directory
def test_second_run_on_a_busy_directory_is_refused_and_a_killed_holder_is_stale(tiny_overrides):
    cfg = _cfg(tiny_overrides)
    run_dir = run_dir_for(cfg)
    first = _spawn_training(tiny_overrides)
    try:
        _wait_for_rows(run_dir / "metrics.jsonl", first)
        for flag in ([], ["--overwrite"], ["--resume"]):
            second = _cli("train", *tiny_overrides, "algorithm.name=supervised", *flag)
            assert second.returncode == 2, second.stderr
            error = second.stderr.strip().splitlines()
            assert len(error) == 1 and f"process {first.pid}" in error[0], error
            assert "in use" in error[0]
        with pytest.raises(RunDirBusy, match=f"process {first.pid}"):
            run(cfg, overwrite=True)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    lock = json.loads((run_dir / ".lock").read_text())
    assert lock["pid"] == first.pid  # the kill left its record behind: a stale lock
    result = run(cfg, overwrite=True)
    assert result.finished and (run_dir / "summary.json").is_file()
    assert (run_dir / ".lock").read_text() == ""  # released on the way out


def test_lock_is_released_when_a_run_fails(tiny_overrides):
    cfg = _cfg(tiny_overrides, "data.labels_per_class=5000")  # the split cannot be drawn
    with pytest.raises(DataError):
        run(cfg)
    with RunDir(run_dir_for(cfg)):  # not held by the failed run any more
        pass


# ---------------------------------------------------------------- 2. --overwrite keeps nothing
def test_overwrite_leaves_nothing_of_the_old_run(tiny_overrides):
    cfg = _cfg(tiny_overrides, "data.val_per_class=2")
    run_dir = run(cfg).run_dir
    assert (run_dir / "summary.json").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    (run_dir / "notes.txt").write_text("left by the user")
    result = run(_cfg(tiny_overrides), overwrite=True, stop_after=3)
    assert not result.finished
    files = set(_snapshot(run_dir))
    assert files == {"config.yaml", "split.json", "metrics.jsonl", "metrics.csv",
                     "checkpoints/last.pt", "notes.txt"}  # the user's file is not the run's
    assert max(r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")) == 3


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(tiny_overrides):
    run_dir = run(_cfg(tiny_overrides)).run_dir
    before = _snapshot(run_dir)
    with pytest.raises(DataError):
        run(_cfg(tiny_overrides, "data.labels_per_class=5000"), overwrite=True)
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("flags", [{"overwrite": True}, {"resume": True}, {}])
def test_a_folder_of_the_users_own_files_is_never_emptied(tiny_overrides, tmp_path, flags):
    """train.run_name / out_dir pointing at a folder that is not a run: --overwrite (or a
    --resume that finds no checkpoint and starts over) must not delete the user's files."""
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("three years of work")
    (folder / "config.yaml").write_text("mine: true\n")
    cfg = _cfg(tiny_overrides, f"train.out_dir={tmp_path}", "train.run_name=thesis")
    with pytest.raises(RunDirBusy, match="no interlude run"):
        run(cfg, **flags)
    assert (folder / "thesis.tex").read_text() == "three years of work"
    assert (folder / "config.yaml").read_text() == "mine: true\n"


def test_lock_is_emptied_when_the_device_is_refused(tiny_overrides, caplog):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run(_cfg(tiny_overrides, "train.device=cuda"))
    cfg = _cfg(tiny_overrides)
    assert (run_dir_for(cfg) / ".lock").read_text() == ""  # no stale holder left behind
    with caplog.at_level("WARNING", logger="interlude"):
        run(cfg, stop_after=1)
    assert "stale lock" not in caplog.text


def test_files_are_written_with_the_umask_not_0600(tmp_path):
    from interlude.artifact import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_signal_during_the_last_step_is_a_finished_run(tiny_overrides, monkeypatch):
    from interlude.train.loop import Trainer

    original = Trainer.train_step

    def last_step_signalled(self, step):
        if step == self.cfg.train.steps - 1:  # SIGTERM arrives while the last step runs
            self._stop_requested, self.stop_signal = True, signal.SIGTERM
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", last_step_signalled)
    result = run(_cfg(tiny_overrides))
    assert result.finished and result.stop_signal is None  # exit 0, not 143


def test_estimator_refuses_an_existing_run_unless_told(tmp_path):
    from interlude import InterLUDEClassifier

    digits = load_digits()
    X, y = digits.images[:120] / 16.0, np.where(np.arange(120) % 6 == 0, digits.target[:120], -1)
    out = tmp_path / "est"
    params = dict(steps=2, batch_size=4, mu=1, width=4, verbose=0, threads=1, device="cpu",
                  out_dir=str(out))
    InterLUDEClassifier(**params).fit(X, y)
    with pytest.raises(ConfigError, match="already holds a run"):
        InterLUDEClassifier(**params).fit(X, y)
    clf = InterLUDEClassifier(**params, overwrite=True).fit(X, y)
    assert clf.n_iter_ == 2 and (out / "summary.json").is_file()


# ---------------------------------------------------------------- 3. a refused resume writes nothing
def test_refused_resume_writes_nothing(tiny_overrides):
    run_dir = run(_cfg(tiny_overrides, "data.val_per_class=2"), stop_after=3).run_dir
    before = _snapshot(run_dir)
    changed = [
        _cfg(tiny_overrides, "data.val_per_class=2", "train.lr=0.1"),  # config
        _cfg(tiny_overrides, "data.val_per_class=3"),  # validation split
    ]
    for cfg in changed:
        with pytest.raises(CheckpointError, match="different config"):
            run(cfg, resume=True)
        assert _snapshot(run_dir) == before
    split = json.loads((run_dir / "split.json").read_text())
    (run_dir / "split.json").write_text(json.dumps({**split, "labeled": split["labeled"][::-1][:5]}))
    before = _snapshot(run_dir)
    with pytest.raises(CheckpointError, match="does not match the split"):
        run(_cfg(tiny_overrides, "data.val_per_class=2"), resume=True)
    assert _snapshot(run_dir) == before


def test_checkpoint_of_another_format_version_is_one_line_naming_both(tiny_overrides, capsys):
    """A file of an earlier development version is refused, not read with guessed defaults."""
    run_dir = run(_cfg(tiny_overrides), stop_after=3).run_dir
    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["format_version"] == 2
    torch.save({**state, "format_version": 1}, last)
    before = _snapshot(run_dir)
    expected = (f"{last} is an interlude checkpoint of format 1; this interlude reads format 2: "
                "retrain, or use the interlude version that wrote it")
    with pytest.raises(CheckpointError) as refused:
        Checkpoint.load(last)
    assert str(refused.value) == expected
    with pytest.raises(CheckpointError, match="checkpoint of format 1; this interlude reads"):
        run(_cfg(tiny_overrides), resume=True)
    assert main(["eval", str(run_dir)]) != 0
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {expected}"]
    assert _snapshot(run_dir) == before  # nothing rewritten
    torch.save({k: v for k, v in state.items() if k != "format_version"}, last)
    with pytest.raises(CheckpointError, match=r"is not an interlude checkpoint \(no format_"):
        Checkpoint.load(last)


def test_bookkeeping_keys_may_change_on_resume(tiny_overrides):
    run(_cfg(tiny_overrides), stop_after=3)
    result = run(_cfg(tiny_overrides, "train.log_interval=2", "train.eval_batch_size=7"),
                 resume=True)
    assert result.finished


# ---------------------------------------------------------------- 4. the last good checkpoint is good
def test_huge_lr_leaves_no_non_finite_checkpoint(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "algorithm.name=fixmatch", "train.lr=20",
                             "train.steps=30", "train.checkpoint_interval=1"])
    with pytest.raises(TrainingDiverged, match="NaN/inf") as info:
        run(cfg)
    # here the BatchNorm statistics overflow while the loss is still finite (as in the issue)
    assert "running_var" in str(info.value) and "last.pt was not written" in str(info.value)
    last = run_dir_for(cfg) / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["step"] >= 1 and non_finite_entries(state) == []
    assert f"(step {state['step']})" in str(info.value)
    Checkpoint.load(last).build_model()


def test_checkpoint_with_inf_batchnorm_statistics_is_not_written(tiny_overrides, tmp_path):
    result = run(_cfg(tiny_overrides), stop_after=3)
    state = Checkpoint.load(result.run_dir / "checkpoints" / "last.pt")
    key = next(k for k in state.model if k.endswith("running_var"))
    state.model[key] = state.model[key].clone().fill_(float("inf"))
    target = tmp_path / "bad.pt"
    with pytest.raises(NonFiniteState, match=f"model.{key}"):
        state.save(target)
    assert not target.exists() and list(tmp_path.glob(".*.tmp")) == []
    state.model.pop(key)
    state.training["optimizer"]["state"][0]["momentum_buffer"][0] = float("nan")
    with pytest.raises(NonFiniteState, match="optimizer.state.0.momentum_buffer"):
        state.save(target)


def test_diverged_cli_run_exits_3_with_one_line(tiny_overrides, capsys):
    code = main(["train", *tiny_overrides, "algorithm.name=fixmatch", "train.lr=5000",
                 "train.checkpoint_interval=1"])
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "NaN/inf" in err[0]


# ---------------------------------------------------------------- 5. metrics survive kills
_TRIM_AND_STALL = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from interlude.train import logger
    real_fsync = os.fsync
    def stall(fd):
        Path(sys.argv[2]).write_text("writing")
        time.sleep(60)
    os.fsync = stall
    logger._truncate_jsonl(Path(sys.argv[1]), 5)
""")


def test_kill_during_metrics_trim_keeps_the_old_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    original = "".join(json.dumps({"step": s, "kind": "train", "loss": 1.0}) + "\n"
                       for s in range(1, 2001))
    metrics.write_text(original)
    flag = tmp_path / "flag"
    process = subprocess.Popen([sys.executable, "-c", _TRIM_AND_STALL, str(metrics), str(flag)])
    deadline = time.time() + 60
    while not flag.exists() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert flag.exists(), "the trim never reached its write"
    assert metrics.read_text() == original  # old file intact, not 0 bytes
    orphans = list(tmp_path.glob(".metrics.jsonl.*.tmp"))
    assert len(orphans) == 1
    with RunDir(tmp_path):  # the next start cleans up the interrupted write
        assert list(tmp_path.glob("*.tmp")) == [] and not orphans[0].exists()


def test_torn_last_metrics_line_is_dropped_with_a_warning(tiny_overrides, caplog):
    cfg = _cfg(tiny_overrides)
    run_dir = run(cfg, stop_after=6).run_dir
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 7, "kind": "tra')  # a kill mid-append
    with (run_dir / "metrics.csv").open("a") as handle:
        handle.write("7,0.5")
    result = run(cfg, resume=True)
    assert result.finished
    assert "dropped 1 damaged line" in caplog.text
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == sorted(steps) and steps[-1] == 12
    csv_steps = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()]
    assert csv_steps[0] == "step" and csv_steps[1:] == [str(s) for s in range(3, 13, 3)]


# ---------------------------------------------------------------- 6. exit codes, temp files, disk full
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                       (signal.SIGHUP, 129)])  # a closed terminal (issue 19)
def test_signal_saves_a_checkpoint_and_exits_non_zero(tiny_overrides, sig, code):
    process = _spawn_training(tiny_overrides)
    run_dir = run_dir_for(_cfg(tiny_overrides))
    _wait_for_rows(run_dir / "metrics.jsonl", process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "--resume" in out and signal.Signals(sig).name in out
    assert Checkpoint.load(run_dir / "checkpoints" / "last.pt").step >= 2


def test_stop_after_is_not_an_error(tiny_overrides):
    result = _cli("train", *tiny_overrides, "algorithm.name=supervised", "--stop-after", "3")
    assert result.returncode == 0 and "stopped at step 3 (stop_after)" in result.stdout


def test_disk_full_is_one_line_saying_what_was_kept(tiny_overrides, monkeypatch, capsys):
    run(_cfg(tiny_overrides), stop_after=6)
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        if "optimizer" in obj and obj["step"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    code = main(["train", *tiny_overrides, "algorithm.name=supervised", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "disk is full" in err[0] and "previous last.pt is kept" in err[0], err
    run_dir = run_dir_for(_cfg(tiny_overrides))
    assert Checkpoint.load(run_dir / "checkpoints" / "last.pt").step == 6
    assert list((run_dir / "checkpoints").glob(".*.tmp")) == []


def test_write_error_names_the_file(tmp_path, monkeypatch):
    from interlude.artifact import write_atomic

    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EDQUOT, "q")))
    with pytest.raises(WriteError, match="summary.json: the disk is full; nothing was written"):
        write_atomic(tmp_path / "summary.json", "{}")


# ---------------------------------------------------------------- 8. files read back are validated
@pytest.mark.parametrize("change, message", [
    ({"val": "labeled"}, "in both 'labeled' and 'val'"),
    ({"labeled": "twice"}, "index twice"),
    ({"labeled": [1.0, 2.0]}, "list of integer indices"),
    ({"labeled": ["1", "2"]}, "list of integer indices"),
    ({"labeled": [True, 3]}, "list of integer indices"),
    ({"labeled": [10**6]}, "outside the training pool"),
    ({"dataset": "cifar10"}, "made for dataset 'cifar10'"),
    ({"pool_fingerprint": "0" * 24}, "another set of files"),
])
def test_hostile_split_files_are_refused(tmp_path, change, message):
    from interlude.data import build_data

    data = build_data(load_config(None, []).data)
    split = dict(data.split)
    for key, value in change.items():
        if value == "labeled":
            value = split["labeled"][:3]
        elif value == "twice":
            value = split["labeled"] + split["labeled"][:1]
        split[key] = value
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    with pytest.raises(DataError, match=message) as info:
        build_data(load_config(None, [f"data.split_file={path}"]).data)
    assert "\n" not in str(info.value)


def test_split_of_another_set_of_files_is_refused(tmp_path):
    from PIL import Image

    from interlude.data import build_data

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(3):
            (tmp_path / "labeled" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "labeled" / cls / f"{i}.png")
    (tmp_path / "unlabeled").mkdir()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
        tmp_path / "unlabeled" / "u.png")
    keys = ["data.name=imagefolder", f"data.labeled_dir={tmp_path / 'labeled'}",
            f"data.unlabeled_dir={tmp_path / 'unlabeled'}", "data.resolution=8"]
    data = build_data(load_config(None, keys).data)
    (tmp_path / "split.json").write_text(json.dumps(data.split))
    reuse = [*keys, f"data.split_file={tmp_path / 'split.json'}"]
    assert build_data(load_config(None, reuse).data).split["labeled"] == data.split["labeled"]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "labeled" / "a" / "0.png")
    with pytest.raises(DataError, match="another set of files"):
        build_data(load_config(None, reuse).data)


# ---------------------------------------------------------------- 9. the CLI
def test_overrides_may_follow_options(tiny_overrides):
    result = _cli("train", "configs/digits.yaml", "--overwrite", *tiny_overrides,
                  "--stop-after", "3", "train.steps=6")
    assert result.returncode == 0, result.stderr
    assert "stopped at step 3" in result.stdout
    out_dir = Path(next(o for o in tiny_overrides if o.startswith("train.out_dir="))[14:])
    (saved,) = out_dir.glob("*/config.yaml")
    assert load_config(saved).train.steps == 6
    from interlude.cli import parse_args

    args = parse_args(["sweep", "configs/digits.yaml", "--seeds", "0,1", "train.steps=300"])
    assert args.overrides == ["train.steps=300"] and args.seeds == "0,1"
    args = parse_args(["config", "show", "--markdown", "train.steps=5"])
    assert args.items == ["train.steps=5"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--stop-after", "0"], "must be >= 1"),
    (["train", "--stop-after", "x"], "expected a step number"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["eval", "run", "extra=1"], "unrecognized arguments: extra=1"),
    (["nope"], "invalid choice"),
    (["train", "--resume", "--overwrite"], "not allowed with argument --resume"),
    (["sweep", "c.yaml", "--seeds", "a"], "expected integers separated by commas"),
    (["sweep", "c.yaml", "--seeds", "0", "--processes", "0"], "--processes must be >= 1"),
])
def test_every_cli_error_is_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_predict_reads_folders_and_marks_unreadable_files(tiny_overrides, tmp_path, capsys):
    from PIL import Image

    run_dir = run(_cfg(tiny_overrides)).run_dir
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    digits = np.round(load_digits().images[:3] * 255 / 16).astype(np.uint8)
    Image.fromarray(digits[0]).save(images / "a.png")
    Image.fromarray(digits[1]).save(images / "nested" / "b.png")
    (images / "nested" / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("not an image extension: not listed")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["predict", str(run_dir), str(images), "--out", str(out)]) == 0
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].endswith(",error") and len(rows) == 4
    by_name = {Path(r.split(",")[0]).name: r.split(",") for r in rows[1:]}
    assert set(by_name) == {"a.png", "b.png", "broken.png"}
    assert by_name["broken.png"][1] == "" and "cannot read image" in by_name["broken.png"][-1]
    assert by_name["a.png"][1] in [str(c) for c in range(10)] and by_name["a.png"][-1] == ""
    assert "1 file(s) could not be read" in capsys.readouterr().err


# ---------------------------------------------------------------- 7. loading never runs code unasked
@pytest.fixture
def exported(tiny_overrides, tmp_path):
    from interlude.export import export_run

    run_dir = run(_cfg(tiny_overrides)).run_dir
    return {fmt: export_run(run_dir, fmt, str(tmp_path / fmt)).parent
            for fmt in ("safetensors", "torchscript")}


def test_torchscript_is_not_executed_by_default(exported, monkeypatch):
    import interlude
    from interlude.export import ExportError

    def executed(*args, **kwargs):
        raise AssertionError("torch.jit.load ran without allow_code=True")

    monkeypatch.setattr(torch.jit, "load", executed)
    with pytest.raises(ExportError, match="executes code stored in the file; pass allow_code=True"):
        interlude.load(exported["torchscript"])
    monkeypatch.undo()
    assert interlude.load(exported["torchscript"], allow_code=True).predict(
        np.zeros((2, 8, 8), np.uint8)).shape == (2,)


@pytest.mark.parametrize("edit, message", [
    ({"file": "../model.safetensors"}, "plain file name inside"),
    ({"file": "/etc/passwd"}, "plain file name inside"),
    ({"file": "sub/model.safetensors"}, "plain file name inside"),
    ({"class_names": ["a", "b"]}, "class_names must list 10 names"),
    ({"class_names": ["0"] * 10}, "same name twice"),
    ({"num_classes": 12, "class_names": [str(i) for i in range(12)]}, "do not match"),
    ({"std": [-1.0]}, "std must be positive"),
    ({"mean": [float("nan")]}, "mean must hold 1 finite number"),
    ({"mean": [0.1, 0.2, 0.3]}, "mean must hold 1 finite number"),
    ({"image_shape": [2, 8, 8]}, "image_shape must be"),
    ({"format": "pickle"}, "unknown format 'pickle'"),
    ({"model": {"arch": "resnet9000"}}, "unknown model.arch|is not one of|model.arch"),
])
def test_hostile_sidecars_are_one_line_export_errors(exported, edit, message):
    import interlude
    from interlude.export import ExportError

    folder = exported["safetensors"]
    sidecar = json.loads((folder / "interlude.json").read_text())
    (folder / "interlude.json").write_text(json.dumps({**sidecar, **edit}))
    with pytest.raises(ExportError, match=message) as info:
        interlude.load(folder)
    assert "\n" not in str(info.value)


def test_malformed_sidecar_and_symlink_outside_are_refused(exported, tmp_path):
    import interlude
    from interlude.export import ExportError

    folder = exported["safetensors"]
    good = (folder / "interlude.json").read_text()
    (folder / "interlude.json").write_text(good[:-20])
    with pytest.raises(ExportError, match="not valid JSON"):
        interlude.load(folder)
    (folder / "interlude.json").write_text(good)
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(ExportError, match="points outside"):
        interlude.load(folder)


def test_one_place_rebuilds_a_net_from_saved_metadata():
    """grep: build_net is called by the trainer's builder and by artifact.build_inference_net
    only; every reader (eval, predict, export, load, estimator) goes through the latter."""
    callers = sorted(
        str(path.relative_to(REPO / "src")) for path in (REPO / "src" / "interlude").rglob("*.py")
        if "build_net(" in path.read_text() and path.parent.name != "nets"
    )
    assert callers == ["interlude/artifact.py", "interlude/train/__init__.py"]
    assert (REPO / "src/interlude/artifact.py").read_text().count("build_net(") == 1


def test_sweep_runs_a_repeated_seed_once_and_refuses_two_variants_of_one_name(tmp_path):
    from interlude.experiments.sweep import SweepSpec, Variant, plan_runs

    base = REPO / "configs" / "digits.yaml"
    spec = SweepSpec("s", base, [0, 0], [Variant("a", ["train.steps=2"])])
    assert len(plan_runs(spec, tmp_path)) == 1
    spec = SweepSpec("s", base, [0], [Variant("a", ["train.steps=2"]),
                                      Variant("a", ["train.steps=3"])])
    with pytest.raises(ConfigError, match="both named 'a' but differ"):
        plan_runs(spec, tmp_path)


@pytest.mark.parametrize("text, message", [
    ("base: ../digits.yaml\nseeds: [0]\nseeds: [1]\n", "given twice"),
    ("base: ../digits.yaml\nseeds: [x]\n", "'seeds' must be a non-empty list of integers"),
    ("base: ../digits.yaml\nruns: [{overrides: {}}]\n", "'runs' must be a list"),
    ("base: ../digits.yaml\ngrid: {train.lr: 0.1}\n", "'grid' must map keys to non-empty lists"),
])
def test_hostile_sweep_files_are_one_line_errors(tmp_path, text, message):
    from interlude.experiments.sweep import load_sweep_file

    (tmp_path / "sweeps").mkdir()
    path = tmp_path / "sweeps" / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_sweep_file(path)
    assert "\n" not in str(info.value)


def test_report_skips_runs_with_damaged_files(tiny_overrides, tmp_path, capsys):
    from interlude.experiments.report import write_report

    good = run(_cfg(tiny_overrides, "train.run_name=good")).run_dir
    bad = run(_cfg(tiny_overrides, "train.run_name=bad")).run_dir
    (bad / "config.yaml").write_text("train:\n  steps: 1\n  steps: 2\n")
    with (good / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 13, "ki')
    report = write_report([good.parent], tmp_path / "report")
    assert report.is_file()
    err = capsys.readouterr().err
    assert f"skipping {bad}" in err and "given twice" in err


@pytest.mark.parametrize("name", ["../../etc", "/tmp/elsewhere", "a/../../b"])
def test_run_name_cannot_leave_the_output_folder(name):
    with pytest.raises(ConfigError, match="must name a folder inside train.out_dir"):
        load_config(None, [f"train.run_name={name}"])
    assert load_config(None, ["train.run_name=variant/seed0"]).train.run_name == "variant/seed0"


def test_predict_fails_when_no_file_could_be_read(tiny_overrides, tmp_path, capsys):
    run_dir = run(_cfg(tiny_overrides)).run_dir
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["predict", str(run_dir), str(tmp_path / "broken.png")]) == 2
    out, err = capsys.readouterr()
    assert "broken.png" in out and "cannot read image" in out  # the row still says why
    assert err.strip().splitlines()[-1].startswith("error: none of the 1 image file(s)")


@pytest.mark.parametrize("name", [".", "./", "./.", " . "])
def test_run_name_cannot_be_the_output_folder_itself(name):
    # it would make out_dir the run folder: --overwrite would clear every other run in it
    with pytest.raises(ConfigError, match="names train.out_dir itself"):
        load_config(None, [f"train.run_name={name}"])
    assert load_config(None, ["train.run_name=./my-run"]).train.run_name == "./my-run"


def test_a_sidecar_key_given_twice_is_refused(exported):
    # plain json keeps the last value: an edited sidecar could then say two things at once
    import interlude
    from interlude.export import ExportError

    folder = exported["safetensors"]
    text = (folder / "interlude.json").read_text()
    (folder / "interlude.json").write_text(text.replace("{", '{"num_classes": 3, ', 1))
    with pytest.raises(ExportError, match="'num_classes' is given twice") as info:
        interlude.load(folder)
    assert "\n" not in str(info.value)
