"""The few-operator augmentation (issue #12) against the implementation it replaced.

``augment_reference.py`` holds the previous batched code verbatim. Every comparison here is
bit-for-bit (``torch.equal``) on the CPU, and the generators must end in the same state, so the
same random numbers were consumed: a run's views, and therefore resumed runs, are unchanged.
"""

from __future__ import annotations

import augment_reference as old
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interlude.config import load_config
from interlude.data import augment as A
from interlude.data.sampler import STREAM_AUGMENT, step_generator
from interlude.train import build_trainer
from interlude.train import input_pipeline as pipeline

VIEWS = (("lw", "uw", "ls", "us"), ("lw", "uw", "us"), ("lw",), ("lw", "ls"))


def images(n: int, c: int, size: int, seed: int) -> torch.Tensor:
    rs = np.random.RandomState(seed)
    return torch.from_numpy(rs.randint(0, 256, (n, c, size, size)).astype(np.uint8))


def generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1000)


def assert_same_state(*pairs: tuple[torch.Generator, torch.Generator]) -> None:
    for a, b in pairs:
        assert torch.equal(a.get_state(), b.get_state()), "different random numbers consumed"


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("n, size", [(1, 32), (2, 16), (5, 8), (33, 28), (200, 32)])
@pytest.mark.parametrize("host_plan", [True, False])
def test_weak_and_strong_equal_previous_implementation(channels, n, size, host_plan):
    x = A.to_float(images(n, channels, size, seed=n + size))
    for seed in range(3):
        for prob in (0.5, 1.0):
            g_old, p_old = generators(seed)
            g_new, p_new = generators(seed)
            expected = old.strong_augment(old.weak_augment(x, g_old, True), g_old, prob=prob,
                                          plan_generator=p_old if host_plan else None)
            got = A.strong_augment(A.weak_augment(x, g_new, True), g_new, prob=prob,
                                   plan_generator=p_new if host_plan else None)
            assert torch.equal(got, expected), (seed, prob)
            assert_same_state((g_old, g_new), (p_old, p_new))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("batch, mu, size", [(1, 1, 32), (2, 7, 32), (4, 3, 8), (8, 7, 16)])
def test_step_views_equal_previous_per_view_loop(channels, batch, mu, size):
    """``augment_views`` (all views at once, read from a store by row) == the old loop."""
    xl, xu = images(batch, channels, size, 1), images(batch * mu, channels, size, 2)
    store = torch.cat([images(3, channels, size, 3), xu, xl])  # rows out of order on purpose
    rows_l, rows_u = 3 + len(xu) + np.arange(batch), 3 + np.arange(len(xu))
    for views in VIEWS:
        for seed, hflip in ((0, True), (1, False), (2, True)):
            g_old, p_old = generators(seed)
            g_new, p_new = generators(seed)
            expected = old.old_pipeline_views(A.to_float(xl), A.to_float(xu), views, g_old,
                                              p_old, hflip)
            got = A.augment_views(store, rows_l, rows_u, views, g_new, p_new, hflip)
            assert torch.equal(got, expected), (views, seed)
            assert_same_state((g_old, g_new), (p_old, p_new))


def test_weak_row_and_column_tables_when_the_map_table_is_too_big(monkeypatch):
    """Large images (e.g. 96 px) add row and column tables instead of one whole-image map."""
    monkeypatch.setattr(A, "WEAK_MAPS_MAX_BYTES", 0)
    A._weak_tables.cache_clear()
    x = A.to_float(images(20, 3, 24, 0))
    try:
        for seed, hflip in ((0, True), (1, False)):
            assert A._weak_tables(x.device, 24, 24, 3).maps is None
            expected = old.weak_augment(x, torch.Generator().manual_seed(seed), hflip)
            got = A.weak_augment(x, torch.Generator().manual_seed(seed), hflip)
            assert torch.equal(got, expected)
    finally:
        A._weak_tables.cache_clear()


def test_each_op_family_mix_equals_previous_ops(monkeypatch):
    """One round with a hand-made mix of every op (grey images: a single Sharpness image is
    filtered alone, since a one-image depthwise convolution rounds differently)."""
    batch_sizes = []
    conv2d = F.conv2d
    monkeypatch.setattr(A.F, "conv2d", lambda x, *a, **k: batch_sizes.append(len(x))
                        or conv2d(x, *a, **k))
    for channels in (1, 3):
        x = A.to_float(images(40, channels, 16, channels))
        ops = torch.arange(40) % len(A.OP_NAMES)  # Sharpness (op 8) on images 8, 22 and 36
        ops[22] = ops[36] = A.OP_NAMES.index("Brightness")  # ... now on image 8 only
        mags = 1 + torch.arange(40) % 9
        signs = torch.where(torch.arange(40) % 3 == 0, -1, 1)
        expected = x.clone()
        old._apply_round(expected, ops, mags, signs, torch.ones(40, dtype=torch.bool), 127 / 255)
        got = A._apply_op(x.clone(), ops, mags, signs, 127 / 255)
        assert torch.equal(got, expected), channels
    assert 1 in batch_sizes  # the grey single-Sharpness image went through its own filter


@pytest.mark.parametrize("resident", [True, False])
def test_training_step_views_equal_previous_pipeline(tmp_path, monkeypatch, resident):
    """``BatchBuilder.build`` reads images from the device store (or, for large sets, gathers
    them on the host) and produces the old pipeline's normalised views, step by step."""
    if not resident:
        monkeypatch.setattr(pipeline, "DEVICE_RESIDENT_BYTES", 0)
    cfg = load_config(None, [
        "data.name=digits", "model.width=8", "train.batch_size=8", "train.mu=3",
        "algorithm.name=interlude", "train.device=cpu", f"train.out_dir={tmp_path}",
        "train.progress=false",
    ])
    (tmp_path / "run").mkdir()
    trainer = build_trainer(cfg, tmp_path / "run")
    builder = trainer.batches
    assert builder.store.on_device is resident
    data = trainer.data
    for step in (0, 1, 7):
        idx_l, idx_u = builder.indices(step)
        xl = A.to_float(torch.from_numpy(data.labeled.images.read(idx_l.numpy())))
        xu = A.to_float(torch.from_numpy(data.unlabeled.images.read(idx_u.reshape(-1).numpy())))
        generator = step_generator(cfg.train.seed, step, STREAM_AUGMENT * 1000, "cpu")
        plan = step_generator(cfg.train.seed, step, STREAM_AUGMENT * 1000 + 500, "cpu")
        expected = old.old_pipeline_views(xl, xu, builder.views, generator, plan, data.hflip)
        expected = builder.preprocess.normalize(expected)
        assert torch.equal(builder.build(step).x, expected), step


def test_geometric_maps_made_per_call_when_the_table_is_too_big(monkeypatch):
    """Large images compute the geometric ops' source pixels per call instead of looking them up
    in a table made once: the same maps, so the same views."""
    x = A.to_float(images(60, 3, 16, 0))
    expected = {seed: old.strong_augment(x, torch.Generator().manual_seed(seed), prob=1.0)
                for seed in range(3)}
    monkeypatch.setattr(A, "AFFINE_MAPS_MAX_BYTES", 0)
    A._strong_tables.cache_clear()
    try:
        for seed in range(3):
            assert A._strong_tables(x.device, x.dtype, 3, 16, 16, 127 / 255, 8).affine_maps is None
            got = A.strong_augment(x, torch.Generator().manual_seed(seed), prob=1.0)
            assert torch.equal(got, expected[seed]), seed
    finally:
        A._strong_tables.cache_clear()
