"""Loss functions against numbers computed by hand (softmax([ln 3, 0]) = [0.75, 0.25])."""

from __future__ import annotations

import math

import pytest
import torch

from interlude.algorithms.fixmatch import fixmatch_unlabeled_loss, pseudo_label
from interlude.algorithms.interlude import dc_loss_avg, dc_loss_class_dependent, labeled_delta
from interlude.algorithms.supervised import supervised_loss

L3 = math.log(3.0)
ZERO = [0.0, 0.0]
HIGH0 = [L3, 0.0]  # softmax -> [0.75, 0.25]
HIGH1 = [0.0, L3]  # softmax -> [0.25, 0.75]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def one_item(label_view_strong=ZERO):
    """B=1, mu=2: Delta^L = [.25, -.25]; pair deltas [.25, -.25] (pseudo 0), [-.25, .25] (pseudo 1)."""
    lw, ls = t([HIGH0]), t([label_view_strong])
    uw, us = t([HIGH0, HIGH1]), t([ZERO, ZERO])
    return lw, ls, uw, us


def test_labeled_delta_is_detached_difference():
    lw = t([HIGH0]).requires_grad_()
    delta = labeled_delta(lw, t([ZERO]))
    assert torch.allclose(delta, t([[0.25, -0.25]]))
    assert not delta.requires_grad


def test_dc_avg_hand_computed():
    # Delta^U = mean([.25,-.25], [-.25,.25]) = 0; (0 - Delta^L)^2 = .0625 per class; mean = .0625
    lw, ls, uw, us = one_item()
    assert dc_loss_avg(lw, ls, uw, us, mu=2).item() == pytest.approx(0.0625)


def test_dc_avg_is_zero_when_deltas_match():
    lw, ls, _, _ = one_item()
    uw, us = t([HIGH0, HIGH0]), t([ZERO, ZERO])
    assert dc_loss_avg(lw, ls, uw, us, mu=2).item() == pytest.approx(0.0, abs=1e-7)


def test_dc_cd_uses_only_pairs_with_matching_pseudo_label():
    lw, ls, uw, us = one_item()
    # y=0: only pair 1 (delta [.25,-.25]) counts -> equals Delta^L -> 0
    assert dc_loss_class_dependent(lw, ls, uw, us, torch.tensor([0]), 2).item() == pytest.approx(
        0.0, abs=1e-7
    )
    # y=1: only pair 2 (delta [-.25,.25]) counts -> diff [-.5,.5] -> mean sq .25
    assert dc_loss_class_dependent(lw, ls, uw, us, torch.tensor([1]), 2).item() == pytest.approx(
        0.25
    )


def test_dc_cd_row_without_match_adds_nothing_and_authors_scaling_differs():
    # row 1 as above with y=1 (sum of squares .5); row 2: y=1, both pairs predict 0 (no match),
    # Delta^L_2 = [.5-.75, .5-.25] = [-.25, .25]
    lw = t([HIGH0, ZERO])
    ls = t([ZERO, HIGH0])
    uw = t([HIGH0, HIGH1, HIGH0, HIGH0])
    us = t([ZERO, ZERO, ZERO, ZERO])
    y = torch.tensor([1, 1])
    ours = dc_loss_class_dependent(lw, ls, uw, us, y, 2)
    authors = dc_loss_class_dependent(lw, ls, uw, us, y, 2, authors_scaling=True)
    assert ours.item() == pytest.approx(0.5 / 4)  # (1/(B K)) * matched rows only
    assert authors.item() == pytest.approx((0.5 + 0.125) / 4 * 0.5)  # full MSE x mean(r)


def test_dc_gradient_reaches_both_unlabeled_views_not_labeled():
    lw, ls, uw, us = (x.clone().requires_grad_() for x in one_item())
    dc_loss_avg(lw, ls, uw, us, mu=2).backward()
    assert lw.grad is None or torch.all(lw.grad == 0)
    assert ls.grad is None or torch.all(ls.grad == 0)
    assert uw.grad.abs().sum() > 0 and us.grad.abs().sum() > 0


def test_fixmatch_loss_masks_unconfident_rows_and_averages_over_all_rows():
    weak = t([[math.log(99.0), 0.0], ZERO])  # confidences .99 (kept) and .5 (masked)
    strong = t([ZERO, HIGH1])
    loss, mask, targets = fixmatch_unlabeled_loss(weak, strong, threshold=0.95)
    assert mask.tolist() == [1.0, 0.0]
    assert targets.tolist()[0] == 0
    assert loss.item() == pytest.approx(math.log(2.0) / 2)  # CE([0,0], 0) = ln 2, mean over 2


def test_pseudo_label_temperature_sharpens():
    _, mask_t1, _ = pseudo_label(t([[1.0, 0.0]]), threshold=0.9, temperature=1.0)
    _, mask_sharp, _ = pseudo_label(t([[1.0, 0.0]]), threshold=0.9, temperature=0.25)
    assert mask_t1.item() == 0.0 and mask_sharp.item() == 1.0  # sigmoid(1)=.73, sigmoid(4)=.98


def test_supervised_loss_with_class_weights():
    logits = t([ZERO, ZERO])
    labels = torch.tensor([0, 1])
    assert supervised_loss(logits, labels).item() == pytest.approx(math.log(2))
    weighted = supervised_loss(logits, labels, torch.tensor([0.25, 0.75]))
    # weighted mean sum(w_y * ce) / sum(w_y) (F.cross_entropy(weight=w)): equal CEs stay ln 2
    assert weighted.item() == pytest.approx((0.25 + 0.75) * math.log(2) / (0.25 + 0.75))


def test_supervised_loss_class_weights_by_hand():
    logits = t([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1, 0, 0])
    w = [0.2, 0.8]
    # ce = -log softmax(z)[y] = log(1 + exp(z_other - z_y)) for two classes
    ce = [
        math.log(1 + math.exp(-2.0)),
        math.log(1 + math.exp(-1.0)),
        math.log(2.0),
        math.log(1 + math.exp(3.0)),
    ]
    wy = [w[0], w[1], w[0], w[0]]
    expected = sum(a * b for a, b in zip(wy, ce, strict=True)) / sum(wy)
    got = supervised_loss(logits, labels, torch.tensor(w))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # not the old sum / B convention
    assert got.item() != pytest.approx(sum(a * b for a, b in zip(wy, ce, strict=True)) / 4)
    # uniform weights of any scale give the plain mean
    plain = sum(ce) / 4
    assert supervised_loss(logits, labels).item() == pytest.approx(plain, rel=1e-6)
    scaled = supervised_loss(logits, labels, torch.tensor([5.0, 5.0]))
    assert scaled.item() == pytest.approx(plain, rel=1e-6)
