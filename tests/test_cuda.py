"""What only a GPU shows: the on-device augmentation, bf16 + channels_last + compile training.

Marked ``cuda``: deselected where there is no CUDA device (see ``conftest.py``);
``python benchmarks/gpu_check.py`` runs them on a GPU (``pytest -m cuda``). On CUDA,
``tests/test_hot_path.py`` also checks that training steps never synchronise with the host.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlude.config import load_config
from interlude.data import augment as A
from interlude.train import build_trainer

pytestmark = pytest.mark.cuda
VIEWS = ("lw", "uw", "ls", "us")


def step_store(batch: int = 64, mu: int = 7, channels: int = 3):
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (batch * (1 + mu), channels, 32, 32)).astype(np.uint8)
    return torch.from_numpy(images), np.arange(batch), batch + np.arange(batch * mu)


@pytest.mark.parametrize("channels", [1, 3])
def test_device_augmentation_matches_the_cpu(channels):
    """The same random numbers (CPU generators) give the CPU's views on the GPU: weak views
    exactly (gathers), strong views up to float rounding of the GPU kernels (e.g. a fused
    multiply-add moving a geometric op's source pixel at an exact tie)."""
    store, rows_l, rows_u = step_store(channels=channels)
    views = {}
    for device in ("cpu", "cuda"):
        generator, plan = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
        views[device] = A.augment_views(store.to(device), rows_l, rows_u, VIEWS, generator,
                                        plan, True).cpu()
    weak = len(rows_l) + len(rows_u)  # lw and uw rows come first
    assert torch.equal(views["cuda"][:weak], views["cpu"][:weak])
    diff = (views["cuda"][weak:] - views["cpu"][weak:]).abs()
    assert (diff > 1e-5).float().mean().item() < 0.005
    assert diff.mean().item() < 1e-3


def test_device_augmentation_never_synchronises():
    """With the plan on a CPU generator, a step's augmentation reads nothing back from the GPU."""
    store, rows_l, rows_u = step_store()
    store = store.cuda()
    generator = torch.Generator("cuda").manual_seed(0)
    A.augment_views(store, rows_l, rows_u, VIEWS, generator, torch.Generator().manual_seed(1),
                    True)  # constant tables are made (and copied) once, before the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = A.augment_views(store, rows_l, rows_u, VIEWS, generator,
                              torch.Generator().manual_seed(2), True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device.type == "cuda" and out.shape == (len(rows_l) * 2 + len(rows_u) * 2,
                                                       3, 32, 32)
    again = A.augment_views(store, rows_l, rows_u, VIEWS, torch.Generator("cuda").manual_seed(7),
                            torch.Generator().manual_seed(2), True)
    same = A.augment_views(store, rows_l, rows_u, VIEWS, torch.Generator("cuda").manual_seed(7),
                           torch.Generator().manual_seed(2), True)
    assert torch.equal(again, same)


@pytest.mark.parametrize("compile_model", [False, True])
def test_bf16_channels_last_training_steps(tmp_path, compile_model):
    cfg = load_config(None, [
        "data.name=digits", "model.width=8", "train.batch_size=8", "train.mu=2",
        "algorithm.name=interlude", "train.device=cuda", "train.precision=bf16",
        "train.channels_last=true", f"train.compile={str(compile_model).lower()}",
        f"train.out_dir={tmp_path}", "train.progress=false",
    ])
    (tmp_path / "run").mkdir()
    trainer = build_trainer(cfg, tmp_path / "run")
    assert trainer.autocast and trainer.channels_last
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for step in range(3):
        metrics = trainer.train_step(step)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(),
                                                     strict=True))
    conv = next(p for p in trainer.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert trainer.batches.build(3).x.is_contiguous(memory_format=torch.channels_last)
