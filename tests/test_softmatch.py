"""SoftMatch against hand-computed values, a literal re-statement of USB's code, resume and DDP."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
import torch.nn.functional as F

from interlude.algorithms import AlgorithmContext, Batch, ViewLogits
from interlude.algorithms.softmatch import (
    SoftMatch,
    SoftMatchOptions,
    align_distribution,
    confidence_stats,
    distribution_alignment,
    softmatch_weights,
    update_confidence_stats,
)

# weak-view probabilities of 3 unlabeled rows, K = 3 (max probabilities .7, .5, .34)
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.34, 0.33, 0.33]])
THIRD = torch.full((3,), 1 / 3)


def softmatch(**options) -> SoftMatch:
    """A SoftMatch over 3 classes with its registered options (defaults unless given)."""
    return SoftMatch(SoftMatchOptions(name="softmatch", **options), AlgorithmContext(num_classes=3))


# ---------------------------------------------------------------------- hand-computed values
def test_weights_hand_computed():
    # mu = .5, var = .01, n_sigma = 2: denominator 2 * .01 / 2^2 = .005
    # .7 >= mu -> 1;  .45: exp(-.05^2 / .005) = exp(-.5) = .6065307;  .34: exp(-.0256/.005) = exp(-5.12)
    weights = softmatch_weights(torch.tensor([0.7, 0.45, 0.34]), torch.tensor(0.5),
                                torch.tensor(0.01), n_sigma=2.0)
    assert torch.allclose(weights, torch.tensor([1.0, 0.6065307, 0.0059760]), atol=1e-6)
    # exactly at mu the weight is 1 (the truncation is continuous)
    assert softmatch_weights(torch.tensor([0.5]), torch.tensor(0.5), torch.tensor(0.01), 2.0) == 1.0


def test_confidence_stats_update_hand_computed():
    # max probs .7, .5, .34: mean 1.54/3 = .5133333; deviations .1866667, -.0133333, -.1733333,
    # squares .0348444 + .0001778 + .0300444 = .0650667, unbiased var = .0650667 / 2 = .0325333
    # momentum .9 from (1/3, 1): mu = .3 + .1 * .5133333 = .3513333, var = .9 + .1 * .0325333
    max_probs = PROBS.max(dim=-1).values
    mean, var = confidence_stats(max_probs)
    assert mean.item() == pytest.approx(0.5133333, abs=1e-6)
    assert var.item() == pytest.approx(0.0325333, abs=1e-6)
    mu, var = update_confidence_stats(max_probs, torch.tensor(1 / 3), torch.tensor(1.0), 0.9)
    assert mu.item() == pytest.approx(0.3513333, abs=1e-6)
    assert var.item() == pytest.approx(0.9032533, abs=1e-6)


def test_single_row_batch_has_zero_variance_and_finite_weights():
    mean, var = confidence_stats(torch.tensor([0.6]))
    assert mean.item() == pytest.approx(0.6) and var.item() == 0.0
    # var_t = 0 exactly: the weight at mu stays 1 and below mu goes to 0, never NaN
    weights = softmatch_weights(torch.tensor([0.6, 0.5]), torch.tensor(0.6), torch.tensor(0.0), 2.0)
    assert weights.tolist() == [1.0, 0.0]


def test_distribution_alignment_hand_computed():
    # first step: p_model is unset, so it becomes the batch mean [1.24, 1.03, .73] / 3
    # = [.4133333, .3433333, .2433333] with no EMA; p_target uniform.
    # row 0: [.7/.41333, .2/.34333, .1/.24333] = [1.693548, .582524, .410959], sum 2.687031
    #        -> [.6302676, .2167910, .1529414]
    # row 2: [.34/.41333, .33/.34333, .33/.24333] = [.822581, .961165, 1.356164], sum 3.139910
    #        -> [.2619761, .3061124, .4319115]  (its argmax moves from class 0 to class 2)
    aligned, p_model = align_distribution(
        PROBS, THIRD, THIRD, PROBS.mean(0), momentum=0.9, initialised=torch.tensor(False)
    )
    assert torch.allclose(p_model, torch.tensor([0.4133333, 0.3433333, 0.2433333]), atol=1e-6)
    expected = torch.tensor([[0.6302676, 0.2167910, 0.1529414],
                             [0.1524937, 0.4589614, 0.3885449],
                             [0.2619761, 0.3061124, 0.4319115]])
    assert torch.allclose(aligned, expected, atol=1e-6)
    # once initialised it is an EMA: .9 * [1/3] + .1 * batch mean
    _, p_model = align_distribution(PROBS, THIRD, THIRD, PROBS.mean(0), 0.9, torch.tensor(True))
    assert torch.allclose(p_model, torch.tensor([0.3413333, 0.3343333, 0.3243333]), atol=1e-6)
    # p_model equal to p_target leaves the probabilities unchanged
    assert torch.allclose(distribution_alignment(PROBS, THIRD, THIRD), PROBS, atol=1e-7)


def test_algorithm_step_hand_computed():
    """One step in USB's order: align, update (mu, var) with the aligned max, then weight."""
    algo = softmatch(ema_p=0.9)
    us = torch.zeros(3, 3)  # CE of every row is log 3
    logits = ViewLogits(lw=torch.zeros(1, 3), uw=PROBS.log(), us=us)
    loss, metrics = algo.loss(logits, Batch(labels=torch.tensor([0])), step=0)
    # aligned max probs (test above) .6302676, .4589614, .4319115: mean .5070468, unbiased
    # var .0115704; mu = .3 + .1 * .5070468 = .3507047, var = .9 + .1 * .0115704 = .9011570
    assert algo.prob_max_mu.item() == pytest.approx(0.3507047, abs=1e-6)
    assert algo.prob_max_var.item() == pytest.approx(0.9011570, abs=1e-6)
    assert algo.p_model_initialised.item()
    # every aligned max is above mu: all weights 1, loss_unsup = log 3; loss_sup = log 3
    assert metrics["mask_rate"].item() == pytest.approx(1.0)
    assert metrics["loss_unsup"].item() == pytest.approx(math.log(3), abs=1e-6)
    assert loss.item() == pytest.approx(2 * math.log(3), abs=1e-6)
    # pseudo-labels are the argmax of the *raw* weak logits (row 2 -> class 0), as USB
    assert metrics["pl_counts"].tolist() == [2.0, 1.0, 0.0]


def test_algorithm_without_alignment_hand_computed():
    # max probs .7, .5, .34 -> mu .3513333, var .9032533 (test above); denominator .4516267
    # .34 < mu: exp(-(.34 - .3513333)^2 / .4516267) = exp(-.0002844) = .9997156
    algo = softmatch(ema_p=0.9, dist_align=False)
    logits = ViewLogits(lw=torch.zeros(1, 3), uw=PROBS.log(), us=torch.zeros(3, 3))
    _, metrics = algo.loss(logits, Batch(labels=torch.tensor([0])), step=0)
    assert metrics["mask_rate"].item() == pytest.approx((2 + 0.9997156) / 3, abs=1e-6)
    assert metrics["loss_unsup"].item() == pytest.approx(math.log(3) * (2 + 0.9997156) / 3,
                                                         abs=1e-6)
    assert not algo.p_model_initialised.item()  # nothing aligned, nothing tracked


def test_lambda_u_scales_the_unlabeled_term():
    logits = ViewLogits(lw=torch.zeros(1, 3), uw=PROBS.log(), us=torch.zeros(3, 3))
    full, m = softmatch().loss(logits, Batch(labels=torch.tensor([0])), step=0)
    half, _ = softmatch(lambda_u=0.5).loss(logits, Batch(labels=torch.tensor([0])), step=0)
    assert (full - half).item() == pytest.approx(0.5 * m["loss_unsup"].item(), abs=1e-6)


# ---------------------------------------------------------------------- USB's code, re-stated
class UsbSoftMatchReference:
    """USB 0.3.2's SoftMatch step written out literally (single process, per_class=False,
    hard labels): DistAlignEMAHook.dist_align, then SoftMatchWeightingHook.masking, then
    PseudoLabelingHook on the raw logits, then consistency_loss('ce', mask)."""

    def __init__(self, num_classes, m=0.999, n_sigma=2, dist_uniform=True, lambda_u=1.0):
        self.m, self.n_sigma, self.lambda_u = m, n_sigma, lambda_u
        self.update_p_target = not dist_uniform
        self.p_target = torch.ones((num_classes,)) / num_classes
        self.p_model = None
        self.prob_max_mu_t = torch.tensor(1.0 / num_classes)
        self.prob_max_var_t = torch.tensor(1.0)

    def dist_align(self, probs_x_ulb, probs_x_lb):
        probs_x_ulb = probs_x_ulb.detach()  # update_p
        if self.p_model is None:
            self.p_model = torch.mean(probs_x_ulb, dim=0)
        else:
            self.p_model = self.p_model * self.m + torch.mean(probs_x_ulb, dim=0) * (1 - self.m)
        if self.update_p_target:
            self.p_target = self.p_target * self.m + torch.mean(probs_x_lb, dim=0) * (1 - self.m)
        aligned = probs_x_ulb * (self.p_target + 1e-6) / (self.p_model + 1e-6)
        return aligned / aligned.sum(dim=-1, keepdim=True)

    def masking(self, probs_x_ulb):
        probs_x_ulb = probs_x_ulb.detach()
        max_probs, _ = probs_x_ulb.max(dim=-1)  # update
        prob_max_mu_t = torch.mean(max_probs)
        prob_max_var_t = torch.var(max_probs, unbiased=True)
        self.prob_max_mu_t = self.m * self.prob_max_mu_t + (1 - self.m) * prob_max_mu_t.item()
        self.prob_max_var_t = self.m * self.prob_max_var_t + (1 - self.m) * prob_max_var_t.item()
        max_probs, _ = probs_x_ulb.max(dim=-1)
        mu, var = self.prob_max_mu_t, self.prob_max_var_t
        return torch.exp(-((torch.clamp(max_probs - mu, max=0.0) ** 2) / (2 * var / (self.n_sigma ** 2))))

    def train_step(self, logits_x_lb, y_lb, logits_x_ulb_w, logits_x_ulb_s):
        sup_loss = F.cross_entropy(logits_x_lb, y_lb, reduction="mean")
        probs_x_lb = torch.softmax(logits_x_lb.detach(), dim=-1)
        probs_x_ulb_w = torch.softmax(logits_x_ulb_w.detach(), dim=-1)
        probs_x_ulb_w = self.dist_align(probs_x_ulb_w, probs_x_lb)
        mask = self.masking(probs_x_ulb_w)
        pseudo_label = torch.argmax(logits_x_ulb_w.detach(), dim=-1)
        unsup_loss = (F.cross_entropy(logits_x_ulb_s, pseudo_label, reduction="none") * mask).mean()
        return sup_loss + self.lambda_u * unsup_loss, unsup_loss, mask


@pytest.mark.parametrize("dist_uniform", [True, False])
def test_matches_usb_over_several_steps(dist_uniform):
    num_classes, ema_p = 5, 0.7  # a fast EMA so the state moves visibly within the steps
    options = SoftMatchOptions(name="softmatch", ema_p=ema_p, lambda_u=0.8, dist_uniform=dist_uniform)
    ours = SoftMatch(options, AlgorithmContext(num_classes=num_classes))
    usb = UsbSoftMatchReference(num_classes, m=ema_p, dist_uniform=dist_uniform, lambda_u=0.8)
    generator = torch.Generator().manual_seed(0)
    weights_below_one = 0
    for step in range(8):
        lw = torch.randn(4, num_classes, generator=generator) * 2
        uw = torch.randn(12, num_classes, generator=generator) * 2
        us = torch.randn(12, num_classes, generator=generator) * 2
        labels = torch.randint(0, num_classes, (4,), generator=generator)
        total, metrics = ours.loss(ViewLogits(lw=lw, uw=uw, us=us), Batch(labels=labels), step)
        usb_total, usb_unsup, usb_mask = usb.train_step(lw, labels, uw, us)
        torch.testing.assert_close(total, usb_total, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(metrics["loss_unsup"], usb_unsup, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(metrics["mask_rate"], usb_mask.mean(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.p_model, usb.p_model, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.p_target, usb.p_target, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.prob_max_mu, usb.prob_max_mu_t, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.prob_max_var, usb.prob_max_var_t, rtol=1e-5, atol=1e-7)
        weights_below_one += int((usb_mask < 0.999).sum())
    assert weights_below_one > 10, "the comparison is vacuous: the Gaussian branch never ran"
    assert not torch.allclose(ours.p_model, torch.full((num_classes,), 1 / num_classes))
    assert dist_uniform == torch.equal(ours.p_target, torch.full((num_classes,), 1 / num_classes))


# ---------------------------------------------------------------------- resume
def test_state_dict_round_trip_gives_identical_losses():
    generator = torch.Generator().manual_seed(1)

    def step_logits():
        return ViewLogits(lw=torch.randn(2, 3, generator=generator),
                          uw=torch.randn(6, 3, generator=generator) * 3,
                          us=torch.randn(6, 3, generator=generator))

    first, second = softmatch(ema_p=0.9), softmatch(ema_p=0.9)
    batch = Batch(labels=torch.tensor([0, 2]))
    for step in range(3):
        first.loss(step_logits(), batch, step)
    state = first.state_dict()
    assert {"prob_max_mu", "prob_max_var", "p_model", "p_model_initialised", "p_target"} <= set(state)
    second.load_state_dict(state)
    for step in range(3, 6):
        logits = step_logits()
        loss_a, metrics_a = first.loss(logits, batch, step)
        loss_b, metrics_b = second.loss(logits, batch, step)
        assert torch.equal(loss_a, loss_b) and torch.equal(metrics_a["mask_rate"],
                                                           metrics_b["mask_rate"])
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


# Resume: tests/test_train.py::test_resumed_run_equals_uninterrupted_run runs for every registered
# algorithm that uses unlabeled data, SoftMatch included, and compares its buffers bit for bit.


# ---------------------------------------------------------------------- training
def test_small_digits_run_learns(tmp_path):
    from interlude.config import load_config
    from interlude.train import run

    overrides = [
        "algorithm.name=softmatch", "model.width=16", "train.steps=150", "train.batch_size=16",
        "train.mu=3", "train.eval_interval=150", "train.log_interval=50", "train.progress=false",
        "train.ema_decay=0.9", f"train.out_dir={tmp_path}",
    ]
    run_dir = run(load_config(None, overrides)).run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["last"]["test/ema/top1"] > 0.6  # chance is 0.1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    train = [row for row in rows if row["kind"] == "train"]
    assert train[-1]["loss_sup"] < train[0]["loss_sup"]
    # soft weights: strictly between "nothing" and "everything", and mu_t rose from 1/K
    assert all(0.0 < row["mask_rate"] <= 1.0 for row in train)
    assert train[-1]["threshold"] > 0.1


# ---------------------------------------------------------------------- DDP
def _ddp_rank(rank: int, port: int, uw: torch.Tensor, lw: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        algo = softmatch(ema_p=0.8, dist_uniform=False)
        half_u, half_l = uw.shape[1] // 2, lw.shape[1] // 2
        shard = slice(rank * half_u, (rank + 1) * half_u)
        labeled = slice(rank * half_l, (rank + 1) * half_l)
        for step in range(3):
            logits = ViewLogits(lw=lw[step, labeled], uw=uw[step, shard], us=uw[step, shard])
            algo.loss(logits, Batch(labels=torch.zeros(half_l, dtype=torch.long)), step)
        out[rank] = {key: value.clone() for key, value in algo.state_dict().items()}
    finally:
        dist.destroy_process_group()


def test_ddp_state_equals_one_process_on_the_global_batch():
    """Two gloo ranks, each with half of every batch, end with the state of one process that saw
    the whole batch (USB's concat_all_gather semantics, unbiased variance of the global batch)."""
    import torch.multiprocessing as mp

    generator = torch.Generator().manual_seed(2)
    uw = torch.randn(3, 16, 3, generator=generator) * 2  # (step, row, K); rank r: rows 8r..8r+7
    lw = torch.randn(3, 4, 3, generator=generator)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.get_context("spawn").Manager()
    out = manager.dict()
    mp.spawn(_ddp_rank, args=(port, uw, lw, out), nprocs=2, join=True)

    single = softmatch(ema_p=0.8, dist_uniform=False)
    for step in range(3):
        logits = ViewLogits(lw=lw[step], uw=uw[step], us=uw[step])
        single.loss(logits, Batch(labels=torch.zeros(4, dtype=torch.long)), step)
    for key, value in single.state_dict().items():
        torch.testing.assert_close(out[0][key], out[1][key], rtol=0, atol=0)
        torch.testing.assert_close(out[0][key], value, rtol=1e-6, atol=1e-7)
    shard_only = softmatch(ema_p=0.8, dist_uniform=False)  # what rank 0 would hold alone
    for step in range(3):
        logits = ViewLogits(lw=lw[step, :2], uw=uw[step, :8], us=uw[step, :8])
        shard_only.loss(logits, Batch(labels=torch.zeros(2, dtype=torch.long)), step)
    for key in ("prob_max_mu", "prob_max_var", "p_model", "p_target"):
        assert not torch.allclose(out[0][key], shard_only.state_dict()[key], atol=1e-4), key
