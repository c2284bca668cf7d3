"""Dispatched-operator counts: the launch overhead of a step, pinned.

On a GPU each dispatched operator costs host time whatever the batch size, so the issue's goal is
a step's augmentation (weak views of lw/uw/ls/us, strong views of ls/us) in under 400 operators
at the paper batch (64 labeled + 7 x 64 unlabeled). A count is deterministic for a given step
(unlike a timing), so it can be asserted; ``benchmarks/speed.py --sections ops`` reports it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlude.config import load_config
from interlude.data import augment as A
from interlude.train import build_trainer
from interlude.train.opcount import count_aten_ops, floor_step_fn, step_op_counts

GOAL = 400
VIEWS = {"interlude": ("lw", "uw", "ls", "us"), "fixmatch": ("lw", "uw", "us")}


def step_images(batch: int, mu: int, size: int = 32):
    rs = np.random.RandomState(0)
    store = torch.from_numpy(rs.randint(0, 256, (batch * (1 + mu), 3, size, size)).astype(np.uint8))
    return store, np.arange(batch), batch + np.arange(batch * mu)


def augmentation_ops(batch: int, mu: int, views, step: int) -> int:
    """Operators of one step's augmentation; constant tables are made (once) before counting."""
    store, rows_l, rows_u = step_images(batch, mu)

    def augment(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        plan = torch.Generator().manual_seed(seed + 1000)
        return A.augment_views(store, rows_l, rows_u, views, generator, plan, True)

    augment(step + 100)
    return count_aten_ops(lambda: augment(step)).total


@pytest.mark.parametrize("algorithm", VIEWS)
def test_step_augmentation_dispatches_under_400_operators(algorithm):
    counts = [augmentation_ops(64, 7, VIEWS[algorithm], step) for step in range(3)]
    assert max(counts) < GOAL, counts


def test_operator_count_does_not_grow_with_the_batch():
    """Vectorised: once every op family occurs in both rounds the count is fixed (up to a
    ``fill_`` that the CPU reduction kernels dispatch or not depending on the size)."""
    counts = [augmentation_ops(batch, 7, VIEWS["interlude"], 0) for batch in (64, 128)]
    assert abs(counts[0] - counts[1]) <= 2, counts


def test_batching_the_views_dispatches_under_half_the_per_view_calls():
    """``augment_views`` does all views in one pass: under half the operators of calling
    ``weak_augment`` per view and ``strong_augment`` per strong view (about 950 operators)."""
    store, rows_l, rows_u = step_images(64, 7)
    xl, xu = A.to_float(store[rows_l]), A.to_float(store[rows_u])

    def per_view() -> list[torch.Tensor]:
        generator, plan = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        weak = [A.weak_augment(x, generator, True) for x in (xl, xu, xl, xu)]
        return weak[:2] + [A.strong_augment(x, generator, plan_generator=plan) for x in weak[2:]]

    per_view()  # constant tables made once, before counting
    count = count_aten_ops(per_view).total
    assert count > 2 * augmentation_ops(64, 7, VIEWS["interlude"], 0)


def test_step_counts_split_input_pipeline_and_model_step(tmp_path):
    cfg = load_config(None, [
        "data.name=digits", "model.width=8", "train.batch_size=8", "train.mu=2",
        "algorithm.name=interlude", "train.device=cpu", f"train.out_dir={tmp_path}",
        "train.progress=false",
    ])
    (tmp_path / "run").mkdir()
    trainer = build_trainer(cfg, tmp_path / "run")
    ops = step_op_counts(trainer, 1)
    assert 0 < ops.augmentation < ops.input.total < GOAL + 100  # + sampling, normalising
    assert ops.input.by_name["aten::uniform_"] > 0  # the augmentation's draws are counted here
    assert ops.model.by_name["aten::convolution_backward"] > 0  # and the backward pass there
    assert ops.model.by_name["aten::uniform_"] == 0
    batch = trainer.batches.build(1).x
    floor = count_aten_ops(floor_step_fn(trainer.model, batch, trainer.optimizer))
    assert 0 < floor.total < ops.model.total  # the floor is a strict subset of the model step
