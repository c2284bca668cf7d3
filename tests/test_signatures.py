"""Failure signatures: each rule on hand-made metric records (fires with its numbers, stays quiet
on a healthy run, silent without its inputs), and the end-of-run warning of a real tiny run.

Records follow what ``RunLogger`` writes: ``train`` rows of window means (``pl_counts`` summed),
``eval`` rows of top-1 fractions and a ``data`` row with ``labeled_counts`` at step 0.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from interlude.config import load_config
from interlude.experiments.signatures import (
    Thresholds,
    dc_dominating,
    group_signatures,
    mask_rate_climbing,
    mask_rate_stuck,
    over_regularisation,
    pseudo_label_skew,
    run_dir_signatures,
    run_signatures,
    seed_spread,
)
from interlude.train import run


def train_rows(n: int, every: int = 10, **series: Any) -> list[dict[str, Any]]:
    """n train records at steps every, 2*every, ...; a series is a constant or a function of i
    (1-based)."""
    rows = []
    for i in range(1, n + 1):
        values = {k: (v(i) if callable(v) else v) for k, v in series.items()}
        rows.append({"step": every * i, "kind": "train", **values})
    return rows


def eval_rows(key: str, points: dict[int, float]) -> list[dict[str, Any]]:
    return [{"step": step, "kind": "eval", key: value} for step, value in points.items()]


def rules(signatures: list) -> list[str]:
    return [s.rule for s in signatures]


# --- seed spread --------------------------------------------------------------------------------


def test_seed_spread_fires_with_the_sample_sd():
    found = seed_spread({0: 0.90, 1: 0.94, 2: 0.92})
    assert found is not None and found.rule == "seed_spread"
    assert found.numbers["sd_points"] == pytest.approx(2.0)  # sd of 90, 94, 92
    assert "sd of 2.0 pts (> 1) over 3 seeds (0: 90.0, 1: 94.0, 2: 92.0)" in found.message
    assert found.message.startswith("high variance across seeds")


def test_seed_spread_quiet_on_close_seeds_and_needs_two():
    assert seed_spread({0: 0.950, 1: 0.955}) is None  # sd 0.35 pts
    assert seed_spread({0: 0.90}) is None
    assert seed_spread({0: 0.90, 1: None}) is None  # one seed recorded the metric
    assert group_signatures({}) == []
    assert seed_spread({0: 0.90, 1: 0.94}, Thresholds(seed_sd=3.0)) is None  # sd 2.83


# --- over-regularisation ------------------------------------------------------------------------


def overregularised(loss_unsup=lambda i: 0.1 * i, accuracies=None) -> list[dict[str, Any]]:
    """Labeled accuracy best (92%) at step 50, 85% at the last eval (100); the unlabeled loss of
    window i is 0.1 * i by default (rising)."""
    accuracies = accuracies or {50: 0.92, 100: 0.85}
    return [*train_rows(10, loss_unsup=loss_unsup), *eval_rows("labeled/ema/top1", accuracies)]


def test_over_regularisation_fires_with_drop_and_loss_rise():
    found = over_regularisation(overregularised())
    assert found is not None
    # windows up to step 50: loss 0.3, 0.4, 0.5 -> 0.4; up to 100: 0.8, 0.9, 1.0 -> 0.9
    assert found.numbers["drop_points"] == pytest.approx(7.0)
    assert found.numbers["unsup_at_best"] == pytest.approx(0.4)
    assert found.numbers["unsup_at_last"] == pytest.approx(0.9)
    assert ("labeled/ema/top1 fell 7.0 pts (> 2) from its best 92.0% at step 50 to 85.0% at "
            "step 100, while loss_unsup rose from 0.400 to 0.900 (+125%, > +5%)") in found.message


def test_over_regularisation_adds_the_dc_loss_and_prefers_val():
    records = [*train_rows(10, loss_unsup=0.5, loss_dc=lambda i: 0.01 * i),
               *eval_rows("labeled/ema/top1", {50: 0.99, 100: 0.99}),  # labeled accuracy flat
               *eval_rows("val/ema/top1", {50: 0.90, 100: 0.80})]
    found = over_regularisation(records, thresholds=Thresholds(unsup_rise=0.05))
    assert found is not None and "val/ema/top1 fell 10.0 pts" in found.message
    assert "loss_unsup + loss_dc rose from 0.540 to 0.590" in found.message  # +9.3%


def test_over_regularisation_quiet_on_healthy_runs():
    assert over_regularisation(overregularised(loss_unsup=0.5)) is None  # flat unlabeled loss
    assert over_regularisation(overregularised(accuracies={50: 0.92, 100: 0.905})) is None  # -1.5
    assert over_regularisation(overregularised(accuracies={50: 0.85, 100: 0.92})) is None  # rising
    # a 2.5% rise (1.020 -> 1.045) is under the 5% threshold
    assert over_regularisation(overregularised(loss_unsup=lambda i: 1 + 0.005 * i)) is None


def test_over_regularisation_reads_the_runs_model():
    records = overregularised()
    assert over_regularisation(records, model="raw") is None  # only ema was evaluated
    raw = [{**r, "labeled/raw/top1": r.pop("labeled/ema/top1")} if r["kind"] == "eval" else r
           for r in overregularised()]
    assert over_regularisation(raw, model="raw") is not None
    assert rules(run_signatures(raw)) == ["over_regularisation"]  # raw found without being told


def test_over_regularisation_not_applicable_to_old_runs():
    old = [*train_rows(10, loss_unsup=lambda i: 0.1 * i),
           *eval_rows("test/ema/top1", {50: 0.92, 100: 0.85})]  # no labeled/val accuracy logged
    assert over_regularisation(old) is None
    no_loss = [*train_rows(10, loss=1.0), *eval_rows("labeled/ema/top1", {50: 0.92, 100: 0.85})]
    assert over_regularisation(no_loss) is None  # supervised: no unlabeled loss


# --- mask rate ----------------------------------------------------------------------------------


def test_mask_rate_climbing_fires_with_the_fitted_rise():
    # 20 windows: the tail is the last 4 (steps 170-200), mask 0.81 .. 0.90
    found = mask_rate_climbing(train_rows(20, mask_rate=lambda i: 0.3 + 0.03 * i))
    assert found is not None
    assert found.numbers["rise"] == pytest.approx(0.09)
    assert ("mask_rate rose by 0.090 (> 0.05, fitted line) over the last 20% of training "
            "(steps 170-200), ending at 0.900") in found.message


def test_mask_rate_climbing_quiet_on_a_plateau_and_on_noise():
    assert mask_rate_climbing(train_rows(20, mask_rate=0.95)) is None
    # noisy tail (0.93, 0.97, 0.93, 0.97): fitted rise 0.024, though last - first is 0.04
    noisy = train_rows(20, mask_rate=lambda i: 0.95 + (0.02 if i % 2 == 0 else -0.02))
    assert mask_rate_climbing(noisy) is None


def test_mask_rate_stuck_fires_below_the_floor():
    rows = train_rows(10, mask_rate=lambda i: 0.5 if i <= 8 else 0.002 * i)  # tail: 0.018, 0.020
    found = mask_rate_stuck(rows)
    assert found is not None and found.numbers["mean_mask_rate"] == pytest.approx(0.019)
    assert "mean mask_rate 0.019 (< 0.05) over the last 20% of training (steps 90-100)" in found.message
    assert mask_rate_stuck(train_rows(10, mask_rate=0.9)) is None


def test_mask_rules_not_applicable_without_mask_or_enough_windows():
    supervised = train_rows(10, loss=1.0, loss_sup=1.0)
    assert mask_rate_stuck(supervised) is None and mask_rate_climbing(supervised) is None
    short = train_rows(4, mask_rate=0.0)  # 4 windows: no "last 20%"
    assert mask_rate_stuck(short) is None


# --- DC term ------------------------------------------------------------------------------------


def test_dc_dominating_fires_with_the_share():
    records = train_rows(10, loss=lambda i: 2.0 if i <= 8 else 1.0, loss_dc=0.3)
    found = dc_dominating(records, lambda_dc=2.0)
    assert found is not None
    assert found.numbers["share"] == pytest.approx(0.6)  # 2 * 0.3 / 1.0 over the tail
    assert ("lambda_dc * loss_dc = 2 * 0.300 = 0.600 is 60% (> 50%) of loss 1.000 on average over "
            "the last 20% of training (steps 90-100)") in found.message


def test_dc_dominating_quiet_and_not_applicable():
    records = train_rows(10, loss=1.0, loss_dc=0.3)
    assert dc_dominating(records, lambda_dc=1.0) is None  # 30%
    assert dc_dominating(records, lambda_dc=None) is None  # no algorithm.lambda_dc in the config
    assert dc_dominating(train_rows(10, loss=1.0), lambda_dc=2.0) is None  # no loss_dc (fixmatch)
    # lambda_dc read from the config, nested (config.yaml) or dotted (the report's)
    assert rules(run_signatures(records, {"algorithm": {"lambda_dc": 2.0}})) == ["dc_dominating"]
    assert rules(run_signatures(records, {"algorithm.lambda_dc": 2.0})) == ["dc_dominating"]
    assert run_signatures(records, {}) == []


# --- pseudo-label histogram ---------------------------------------------------------------------


def skewed(tail_counts: list[int]) -> list[dict[str, Any]]:
    """Balanced pseudo-labels for 8 windows, then tail_counts in the last two."""
    data = {"step": 0, "kind": "data", "labeled_counts": [10, 10, 10, 10]}
    rows = train_rows(10, pl_counts=lambda i: [5, 5, 5, 5] if i <= 8 else tail_counts)
    return [data, *rows]


def test_pseudo_label_skew_fires_and_names_the_classes():
    found = pseudo_label_skew(skewed([5, 1, 2, 2]))  # tail sum 10, 2, 4, 4 -> 50/10/20/20%
    assert found is not None
    assert found.numbers["tv"] == pytest.approx(0.25)  # (25 + 15 + 5 + 5) / 2 points
    assert found.numbers["pseudo_labels"] == 20
    assert ("total-variation distance 0.250 (> 0.2) between the 20 confident pseudo-labels of the "
            "last 20% of training (steps 90-100)") in found.message
    assert "most over-predicted: class 0 (50.0% of pseudo-labels vs 25.0% labeled)" in found.message
    assert "most under-predicted: class 1 (10.0% vs 25.0%)" in found.message


def test_pseudo_label_skew_against_an_imbalanced_prior():
    # the prior itself is 70/10/10/10: pseudo-labels that follow it are healthy
    records = skewed([7, 1, 1, 1])
    records[0]["labeled_counts"] = [70, 10, 10, 10]
    assert pseudo_label_skew(records) is None
    assert pseudo_label_skew(skewed([7, 1, 1, 1])) is not None  # vs a balanced prior: TV 0.45


def test_pseudo_label_skew_quiet_and_not_applicable():
    assert pseudo_label_skew(skewed([3, 2, 3, 2])) is None  # TV 0.05
    no_prior = skewed([5, 1, 2, 2])[1:]  # an older run: no data record
    assert pseudo_label_skew(no_prior) is None
    assert pseudo_label_skew(skewed([5, 1, 2])) is None  # class count mismatch
    assert pseudo_label_skew(skewed([0, 0, 0, 0])) is None  # no confident pseudo-label
    assert pseudo_label_skew(skewed([5, 1, 2, 2]), Thresholds(pl_tv=0.3)) is None


def test_nothing_applies_to_a_run_without_the_inputs():
    old = [*train_rows(10, loss=1.0, loss_sup=1.0, lr=0.03),
           *eval_rows("test/ema/top1", {50: 0.9, 100: 0.5})]
    assert run_signatures(old, {"algorithm": {"lambda_dc": 1.0}}) == []
    damaged = [{"kind": "train"}, {"step": "x", "kind": "train", "mask_rate": 0.0},
               *train_rows(10, mask_rate="high", loss_dc=None, pl_counts=["a"]),
               {"step": 0, "kind": "data", "labeled_counts": "ten"}]
    assert run_signatures(damaged, {"algorithm": {"lambda_dc": 1.0}}) == []


def test_all_run_rules_together():
    records = [{"step": 0, "kind": "data", "labeled_counts": [10, 10, 10, 10]},
               *train_rows(10, loss=1.0, loss_unsup=lambda i: 0.1 * i, loss_dc=0.3,
                           mask_rate=lambda i: 0.01 * i / 4, pl_counts=[5, 1, 2, 2]),
               *eval_rows("labeled/ema/top1", {50: 0.92, 100: 0.85})]
    found = run_signatures(records, {"algorithm": {"lambda_dc": 2.0}})
    assert rules(found) == ["over_regularisation", "mask_rate_stuck", "dc_dominating",
                            "pseudo_label_skew"]


# --- end of run ---------------------------------------------------------------------------------


def test_end_of_run_warns_of_a_stuck_mask_rate(tiny_overrides, caplog):
    # threshold 1.0: no pseudo-label is ever confident enough, so the mask rate stays at zero
    overrides = [*tiny_overrides, "algorithm.name=fixmatch", "algorithm.threshold=1.0",
                 "train.log_interval=2"]
    with caplog.at_level(logging.WARNING, logger="interlude"):
        run_dir = run(load_config(None, overrides)).run_dir
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    stuck = [w for w in warnings if "[mask_rate_stuck]" in w]
    assert stuck == [("warning: mask rate stuck near zero: mean mask_rate 0.000 (< 0.05) over the "
                      "last 20% of training (steps 10-12): almost no unlabeled image passes the "
                      "confidence threshold [mask_rate_stuck]")]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["mask_rate"] for r in records if r["kind"] == "train"] == [0.0] * 6
    assert rules(run_dir_signatures(run_dir)) == ["mask_rate_stuck"]
