"""FreeMatch / InterLUDE+ against hand-computed values; empty-mask safety; state on resume."""

from __future__ import annotations

import pytest
import torch

from interlude.algorithms import AlgorithmContext, Batch, ViewLogits, build_algorithm
from interlude.algorithms.freematch import (
    SelfAdaptiveOptions,
    fairness_loss,
    freematch_update,
    self_adaptive_mask,
)
from interlude.config import ALGORITHMS, section_options

# weak-view probabilities of 3 unlabeled rows, K = 3
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.34, 0.33, 0.33]])
THIRD = torch.full((3,), 1 / 3)
SELF_ADAPTIVE = [c.name for c in ALGORITHMS if issubclass(c.options, SelfAdaptiveOptions)]



def test_freematch_update_hand_computed():
    # decay 0.9 from the 1/K initialisation:
    # tau = .9/3 + .1 * mean(.7, .5, .34) = .3 + .1 * .513333 = .3513333
    # p~  = .9/3 + .1 * [1.24, 1.03, .73] / 3 = [.3413333, .3343333, .3243333]
    # h   = .9/3 + .1 * [2/3, 1/3, 0]           = [.3666667, .3333333, .3]
    tau, p_class, hist = freematch_update(PROBS, torch.tensor(1 / 3), THIRD, THIRD, decay=0.9)
    assert tau.item() == pytest.approx(0.3513333, abs=1e-6)
    assert torch.allclose(p_class, torch.tensor([0.3413333, 0.3343333, 0.3243333]), atol=1e-6)
    assert torch.allclose(hist, torch.tensor([0.3666667, 0.3333333, 0.3]), atol=1e-6)


def test_self_adaptive_mask_uses_class_scaled_threshold():
    tau = torch.tensor(0.3513333)
    p_class = torch.tensor([0.3413333, 0.3343333, 0.3243333])
    # thresholds: class 0: .35133 * 1; class 1: .35133 * .33433/.34133 = .34413
    assert self_adaptive_mask(PROBS, tau, p_class).tolist() == [1.0, 1.0, 0.0]  # .34 < .35133
    # a class-1 row at .345 passes class 1's lower threshold but would fail class 0's
    row = torch.tensor([[0.33, 0.345, 0.325]])
    assert self_adaptive_mask(row, tau, p_class).tolist() == [1.0]
    assert self_adaptive_mask(row[:, [1, 0, 2]], tau, p_class).tolist() == [0.0]


def test_algorithm_updates_state_before_masking():
    algo = build_algorithm(section_options("algorithm", name="freematch", ema_p=0.9), AlgorithmContext(3))
    logits = ViewLogits(lw=torch.zeros(1, 3), uw=PROBS.log(), us=torch.zeros(3, 3))
    _, metrics = algo.loss(logits, Batch(labels=torch.tensor([0])), step=0)
    assert algo.global_confidence.item() == pytest.approx(0.3513333, abs=1e-6)
    assert metrics["mask_rate"].item() == pytest.approx(2 / 3)


def test_empty_mask_fairness_is_zero_with_finite_gradients():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = fairness_loss(logits, torch.zeros(4), THIRD, THIRD)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()


def test_fairness_hand_computed_single_masked_row():
    # one masked row with softmax [.5, .25, .25] (argmax 0): hist_s = [1, 0, 0],
    # q' = normalise([.5, 0, 0]) = [1, 0, 0]; p' = normalise(p~/h) = [1/3]*3 for uniform state
    # L = 1/3 log(1) + 2/3 log(1e-12)
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]))
    loss = fairness_loss(logits, torch.tensor([1.0, 0.0]), THIRD, THIRD)
    expected = 2 / 3 * torch.log(torch.tensor(1e-12)).item()
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", SELF_ADAPTIVE)
def test_empty_mask_whole_loss_is_finite(name):
    algo = build_algorithm(section_options("algorithm", name=name, ema_p=0.9), AlgorithmContext(3))
    algo.global_confidence.fill_(2.0)  # tau stays > 1 after this step: nothing is confident
    us = torch.randn(3, 3, requires_grad=True)
    lw = torch.randn(1, 3, requires_grad=True)
    logits = ViewLogits(lw=lw, uw=PROBS.log(), ls=torch.randn(1, 3), us=us)
    loss, metrics = algo.loss(logits, Batch(labels=torch.tensor([0])), step=0)
    loss.backward()
    assert metrics["mask_rate"].item() == 0.0 and metrics["loss_fair"].item() == 0.0
    assert torch.isfinite(loss) and torch.isfinite(us.grad).all() and torch.isfinite(lw.grad).all()


@pytest.mark.parametrize("name", SELF_ADAPTIVE)
def test_state_dict_round_trip_restores_thresholds(name):
    cfg = section_options("algorithm", name=name, ema_p=0.9)
    first, second = build_algorithm(cfg, AlgorithmContext(3)), build_algorithm(cfg, AlgorithmContext(3))
    logits = ViewLogits(lw=torch.zeros(1, 3), uw=PROBS.log(), ls=torch.zeros(1, 3),
                        us=torch.randn(3, 3))
    for _ in range(3):
        first.loss(logits, Batch(labels=torch.tensor([0])), step=0)
    second.load_state_dict(first.state_dict())
    assert torch.equal(first.global_confidence, second.global_confidence)
    loss_a, _ = first.loss(logits, Batch(labels=torch.tensor([0])), step=3)
    loss_b, _ = second.loss(logits, Batch(labels=torch.tensor([0])), step=3)
    assert torch.equal(loss_a, loss_b)


def test_interlude_plus_adds_dc_and_fusion():
    algo = build_algorithm(section_options("algorithm", name="interlude_plus"), AlgorithmContext(3))
    assert algo.views == ("lw", "uw", "ls", "us") and algo.fusion_strength == 0.1
    logits = ViewLogits(lw=torch.randn(1, 3), uw=torch.randn(3, 3), ls=torch.randn(1, 3),
                        us=torch.randn(3, 3))
    _, metrics = algo.loss(logits, Batch(labels=torch.tensor([0])), step=0)
    assert {"loss_dc", "loss_fair", "loss_unsup", "mask_rate"} <= set(metrics)
