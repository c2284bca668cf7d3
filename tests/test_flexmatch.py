"""FlexMatch's curriculum thresholds against hand-computed values; state on resume."""

from __future__ import annotations

import pytest
import torch

from interlude.algorithms import AlgorithmContext, Batch, ViewLogits, build_algorithm
from interlude.algorithms.flexmatch import (
    class_learning_effect,
    flexible_thresholds,
    remember_confident,
)
from interlude.config import section_options

# 6 unlabeled images: 3 never confidently predicted, 2 assigned to class 0, 1 to class 1
SELECTED = torch.tensor([-1, 0, 0, 1, -1, -1])


def test_learning_effect_with_warmup_counts_unused_images():
    beta = class_learning_effect(SELECTED, num_classes=2, warmup=True)
    assert beta.tolist() == pytest.approx([2 / 3, 1 / 3])  # / max(2, 1, #unused=3)
    # tau * x / (2 - x): .95 * (2/3)/(4/3) = .475 ; .95 * (1/3)/(5/3) = .19
    assert flexible_thresholds(beta, 0.95).tolist() == pytest.approx([0.475, 0.19])


def test_learning_effect_without_warmup():
    beta = class_learning_effect(SELECTED, num_classes=2, warmup=False)
    assert beta.tolist() == pytest.approx([1.0, 0.5])
    assert flexible_thresholds(beta, 0.95).tolist() == pytest.approx([0.95, 0.95 * 0.5 / 1.5])


def test_nothing_assigned_gives_zero_thresholds():
    beta = class_learning_effect(torch.full((5,), -1), num_classes=3, warmup=True)
    assert beta.tolist() == [0.0, 0.0, 0.0]


def _logits(probs):
    return torch.tensor(probs).log()


def test_masking_then_memory_update():
    algo = build_algorithm(section_options("algorithm", name="flexmatch"), AlgorithmContext(2, 6))
    algo.selected_label.copy_(SELECTED)
    uw = _logits([[0.5, 0.5 - 1e-6], [0.04, 0.96]])  # .5 >= .475 (class 0); .96 (class 1)
    logits = ViewLogits(lw=torch.zeros(1, 2), uw=uw, us=torch.zeros(2, 2))
    batch = Batch(labels=torch.tensor([0]), unlabeled_indices=torch.tensor([4, 5]))
    _, metrics = algo.loss(logits, batch, step=0)
    assert metrics["mask_rate"].item() == 1.0
    # only the confident (>= .95) image 5 is remembered, as class 1
    assert algo.selected_label.tolist() == [-1, 0, 0, 1, -1, 1]


def test_duplicate_image_in_a_step_keeps_the_confident_prediction():
    memory = torch.tensor([-1, 2, -1])
    indices = torch.tensor([0, 0, 1, 2, 2])
    predicted = torch.tensor([1, 0, 0, 1, 0])
    confident = torch.tensor([True, False, False, True, True])
    # image 0: one confident copy (class 1) and one unconfident copy -> 1, whatever the order;
    # image 1: not confident -> keeps 2; image 2: confident as 1 and 0 -> highest class, 1
    assert remember_confident(memory, indices, predicted, confident).tolist() == [1, 2, 1]
    flipped = remember_confident(memory, indices.flip(0), predicted.flip(0), confident.flip(0))
    assert flipped.tolist() == [1, 2, 1]


def test_state_dict_round_trip_gives_identical_outputs():
    cfg = section_options("algorithm", name="flexmatch")
    first = build_algorithm(cfg, AlgorithmContext(2, 6))
    first.selected_label.copy_(SELECTED)
    second = build_algorithm(cfg, AlgorithmContext(2, 6))
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.selected_label, SELECTED)
    torch.manual_seed(0)
    logits = ViewLogits(lw=torch.randn(2, 2), uw=torch.randn(4, 2) * 3, us=torch.randn(4, 2))
    labels = torch.tensor([0, 1])
    outputs = []
    for algo in (first, second):
        batch = Batch(labels=labels, unlabeled_indices=torch.tensor([0, 2, 4, 5]))
        loss, metrics = algo.loss(logits, batch, step=0)
        outputs.append((loss, metrics["threshold"], algo.selected_label.clone()))
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)


def test_no_indices_is_a_clear_error():
    algo = build_algorithm(section_options("algorithm", name="flexmatch"), AlgorithmContext(2, 6))
    logits = ViewLogits(lw=torch.zeros(1, 2), uw=torch.zeros(2, 2), us=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="unlabeled indices"):
        algo.loss(logits, Batch(labels=torch.tensor([0])), step=0)


def test_learning_effect_counts_without_bincount(monkeypatch):
    """``torch.bincount`` reads min/max back to the host on CUDA (a wait every step): the counts
    come from a fixed-size ``scatter_add_`` and equal bincount's."""
    selected = torch.tensor([-1, 2, 2, 0, -1, 1, 2, 2, -1, 0])
    expected = torch.bincount(selected + 1, minlength=4).float()
    monkeypatch.setattr(torch, "bincount", lambda *a, **k: pytest.fail("bincount called"))
    beta = class_learning_effect(selected, num_classes=3, warmup=True)
    assert beta.tolist() == pytest.approx((expected[1:] / expected.max()).tolist())
    assert class_learning_effect(selected, 3, warmup=False).tolist() == pytest.approx(
        [0.5, 0.25, 1.0])
