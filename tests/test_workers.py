"""``augment_on: workers``: per-image views that depend only on (seed, step, global row)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlude.config import load_config
from interlude.data.sampler import StepSampler
from interlude.train import run
from interlude.train.workers import (
    Collate,
    PairedViews,
    StepKeys,
    WorkerBatches,
    augment_image,
    row_rng,
)

VIEWS = ("lw", "uw", "ls", "us")


def _dataset(channels: int = 3) -> tuple[PairedViews, StepSampler]:
    rs = np.random.RandomState(0)
    labeled = rs.randint(0, 256, (10, channels, 16, 16), dtype=np.uint8)
    unlabeled = rs.randint(0, 256, (30, channels, 16, 16), dtype=np.uint8)
    return PairedViews(labeled, unlabeled, VIEWS, True, seed=3), StepSampler(10, 30, 4, 2, 3)


def _step(dataset: PairedViews, keys: StepKeys, step: int) -> torch.Tensor:
    return Collate(dataset.views)([dataset[key] for key in keys.keys(step)])["x"]


@pytest.mark.parametrize("channels", [1, 3])
def test_item_is_the_per_image_reference(channels):
    dataset, sampler = _dataset(channels)
    key = StepKeys(sampler, 0, 1).keys(5)[2]
    step, row, li, ui = key
    item = dataset[key]
    rng = row_rng(3, step, row)
    expected = {
        "lw": [augment_image(dataset.labeled.read([li])[0], rng, False, True)],
        "uw": [augment_image(dataset.unlabeled.read([j])[0], rng, False, True) for j in ui],
        "ls": [augment_image(dataset.labeled.read([li])[0], rng, True, True)],
        "us": [augment_image(dataset.unlabeled.read([j])[0], rng, True, True) for j in ui],
    }
    for view in VIEWS:
        assert item[view].shape == (len(expected[view]), channels, 16, 16)
        np.testing.assert_array_equal(item[view], np.stack(expected[view]))


def test_rank_shards_are_rows_of_the_single_process_batch():
    dataset, sampler = _dataset()
    whole = _step(dataset, StepKeys(sampler, 0, 10), step=7)
    shards = [_step(dataset, StepKeys(sampler, 0, 10, rank, 2), step=7) for rank in (0, 1)]
    b, mu = 4, 2

    def views(x: torch.Tensor, batch: int) -> list[torch.Tensor]:
        sizes = [batch, batch * mu, batch, batch * mu]
        return list(torch.split(x, sizes))

    for view, full, part0, part1 in zip(VIEWS, views(whole, b), *(views(s, 2) for s in shards),
                                        strict=True):
        assert torch.equal(full, torch.cat([part0, part1])), view


def test_loader_output_does_not_depend_on_workers_or_restarts():
    dataset, sampler = _dataset()
    in_process = WorkerBatches(dataset, sampler, total_steps=6, num_workers=0)
    expected = [in_process.get(step) for step in range(6)]
    two_workers = WorkerBatches(dataset, sampler, total_steps=6, num_workers=2)
    got = [two_workers.get(step) for step in (0, 1, 4, 5, 2)]  # skips restart the loader
    two_workers.close()
    for step, batch in zip((0, 1, 4, 5, 2), got, strict=True):
        assert torch.equal(batch, expected[step]), step


def test_resumed_workers_run_equals_uninterrupted_run(tiny_overrides):
    base = [*tiny_overrides, "algorithm.name=interlude", "train.augment_on=workers",
            "train.num_workers=2"]
    whole = run(load_config(None, [*base, "train.run_name=whole"])).run_dir
    chunked_cfg = load_config(None, [*base, "train.run_name=chunked"])
    run(chunked_cfg, stop_after=5)
    chunked = run(chunked_cfg, resume=True).run_dir
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(chunked / "checkpoints" / "last.pt", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
