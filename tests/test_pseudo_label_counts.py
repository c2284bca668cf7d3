"""Per-class pseudo-label counts, the labeled prior and the labeled accuracy a run logs.

These are the inputs of the failure signatures `interlude report` names (a pseudo-label
histogram far from the labeled prior, labeled accuracy falling while the unlabeled loss rises).
"""

from __future__ import annotations

import json

import pytest
import torch

from interlude.algorithms.base import pseudo_label_metrics
from interlude.algorithms.fixmatch import fixmatch_unlabeled_loss
from interlude.config import load_config
from interlude.train import run


def test_counts_by_hand():
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    targets = torch.tensor([2, 0, 2, 1, 1])
    metrics = pseudo_label_metrics(mask, targets, num_classes=4)
    assert metrics["pl_counts"].tolist() == [0.0, 1.0, 2.0, 0.0]  # class 0 and one 1 masked out
    assert metrics["mask_rate"].item() == pytest.approx(0.6)


def test_counts_of_fixmatch_pseudo_labels():
    # rows 0, 1 and 3 are confident (softmax max >= 0.95); row 2 is not
    weak = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 9.0], [1.0, 1.1, 0.9], [0.0, 0.0, 8.0]])
    strong = torch.zeros_like(weak)
    _, mask, targets = fixmatch_unlabeled_loss(weak, strong, threshold=0.95, temperature=1.0)
    assert mask.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert pseudo_label_metrics(mask, targets, 3)["pl_counts"].tolist() == [1.0, 0.0, 2.0]


def test_run_logs_counts_prior_and_labeled_accuracy(tiny_overrides):
    # threshold 0.01: every unlabeled row passes, so each window counts all its rows
    overrides = [*tiny_overrides, "algorithm.name=fixmatch", "algorithm.threshold=0.01"]
    cfg = load_config(None, overrides)
    run_dir = run(cfg).run_dir
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    data = [r for r in records if r["kind"] == "data"]
    assert data == [{"step": 0, "kind": "data", "labeled_counts": [4] * 10}]
    train = [r for r in records if r["kind"] == "train"]
    rows_per_window = cfg.train.batch_size * cfg.train.mu * cfg.train.log_interval
    assert len(train) == cfg.train.steps // cfg.train.log_interval
    for record in train:
        assert len(record["pl_counts"]) == 10
        assert all(isinstance(count, int) for count in record["pl_counts"])
        assert sum(record["pl_counts"]) == rows_per_window
        assert record["mask_rate"] == pytest.approx(1.0)
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and all(0.0 <= r["labeled/ema/top1"] <= 1.0 for r in evals)
