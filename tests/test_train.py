"""End-to-end training on digits: exact resume, learning, NaN handling, checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch

from interlude.algorithms.supervised import Supervised
from interlude.config import ALGORITHMS, load_config
from interlude.errors import CheckpointError, TrainingDiverged
from interlude.train import run


def checkpoint_tensors(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.parametrize("algorithm", [c.name for c in ALGORITHMS if c.target.uses_unlabeled])
def test_resumed_run_equals_uninterrupted_run(tiny_overrides, algorithm):
    base = [*tiny_overrides, f"algorithm.name={algorithm}"]
    whole = run(load_config(None, [*base, "train.run_name=whole"])).run_dir
    chunked_cfg = load_config(None, [*base, "train.run_name=chunked"])
    run(chunked_cfg, stop_after=6)
    assert not (whole.parent / "chunked" / "summary.json").exists()
    chunked = run(chunked_cfg, resume=True).run_dir

    a, b = checkpoint_tensors(whole), checkpoint_tensors(chunked)
    assert a["step"] == b["step"] == 12
    for part in ("model", "ema", "algorithm"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    summary_a = json.loads((whole / "summary.json").read_text())
    summary_b = json.loads((chunked / "summary.json").read_text())
    assert summary_a["last"] == summary_b["last"]
    steps = [json.loads(line)["step"] for line in (chunked / "metrics.jsonl").open()]
    assert steps == sorted(steps), "resumed log must not repeat steps"


def test_small_run_learns(tmp_path):
    overrides = [
        "algorithm.name=fixmatch", "model.width=16", "train.steps=150", "train.batch_size=16",
        "train.mu=3", "train.eval_interval=150", "train.log_interval=50", "train.progress=false",
        "train.ema_decay=0.9", f"train.out_dir={tmp_path}",
    ]
    run_dir = run(load_config(None, overrides)).run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["last"]["test/ema/top1"] > 0.6  # chance is 0.1
    train_rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    losses = [row["loss_sup"] for row in train_rows if row["kind"] == "train"]
    assert losses[-1] < losses[0]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_overrides, monkeypatch):
    original = Supervised.loss

    def poisoned(self, logits, batch, step):
        loss, metrics = original(self, logits, batch, step)
        return (loss * float("nan") if step >= 7 else loss), metrics

    monkeypatch.setattr(Supervised, "loss", poisoned)
    cfg = load_config(None, [*tiny_overrides, "algorithm.name=supervised"])
    with pytest.raises(TrainingDiverged, match="NaN/inf .* last good checkpoint"):
        run(cfg)
    from interlude.train import run_dir_for

    state = checkpoint_tensors(run_dir_for(cfg))
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_checkpoint_on_resume(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "algorithm.name=supervised"])
    run_dir = run(cfg, stop_after=3).run_dir
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        run(cfg, resume=True)


def test_resume_with_different_config_is_rejected(tiny_overrides):
    cfg = load_config(None, [*tiny_overrides, "algorithm.name=supervised"])
    run(cfg, stop_after=3)
    changed = load_config(None, [*tiny_overrides, "algorithm.name=supervised", "train.lr=0.1"])
    with pytest.raises(CheckpointError, match="train.lr"):
        run(changed, resume=True)


def test_existing_run_is_not_overwritten_silently(tiny_overrides):
    from interlude.errors import ConfigError

    cfg = load_config(None, [*tiny_overrides, "algorithm.name=supervised"])
    run(cfg, stop_after=3)
    with pytest.raises(ConfigError, match="--resume"):
        run(cfg)


def test_checkpoint_loads_with_weights_only(tiny_overrides):
    run_dir = run(load_config(None, [*tiny_overrides, "algorithm.name=supervised"]),
                  stop_after=3).run_dir
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and "optimizer" in state and "rng" in state


def test_selection_uses_validation_never_test(tiny_overrides):
    with_val = run(load_config(None, [*tiny_overrides, "algorithm.name=supervised",
                                      "data.val_per_class=2", "train.run_name=val"])).run_dir
    summary = json.loads((with_val / "summary.json").read_text())
    assert summary["selected_by"] == "val"
    best = summary["best"]
    assert best["step"] in (6, 12) and "val/ema/top1" in best and "test/ema/top1" in best
    evals = [json.loads(line) for line in (with_val / "metrics.jsonl").open()]
    val_scores = {e["step"]: e["val/ema/top1"] for e in evals if e["kind"] == "eval"}
    assert best["val/ema/top1"] == max(val_scores.values())
    assert (with_val / "checkpoints" / "best.pt").is_file()

    without_val = run(load_config(None, [*tiny_overrides, "algorithm.name=supervised",
                                         "train.run_name=noval"])).run_dir
    summary = json.loads((without_val / "summary.json").read_text())
    assert summary["selected_by"] == "last" and summary["best"] is None
    assert not (without_val / "checkpoints" / "best.pt").exists()
