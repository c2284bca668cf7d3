"""What only a GPU shows: the on-device augmentation, bf16 + channels_last + compile training.

Marked ``cuda``: deselected where there is no CUDA device (see ``conftest.py``);
``python benchmarks/gpu_check.py`` runs them on a GPU (``pytest -m cuda``). On CUDA,
``tests/test_hot_path.py`` also checks that training steps never synchronise with the host.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interlude.artifact import Checkpoint
from interlude.config import load_config
from interlude.data import augment as A
from interlude.data.synthetic import synthetic_data
from interlude.train import build_trainer

pytestmark = pytest.mark.cuda
VIEWS = ("lw", "uw", "ls", "us")


def step_store(batch: int = 64, mu: int = 7, channels: int = 3):
    rs = np.random.RandomState(0)
    images = rs.randint(0, 256, (batch * (1 + mu), channels, 32, 32)).astype(np.uint8)
    return torch.from_numpy(images), np.arange(batch), batch + np.arange(batch * mu)


def _views_on(device: str, channels: int) -> tuple[torch.Tensor, int]:
    """A paper-batch step's views (uint8 store) made on ``device`` with CPU generators, and the
    number of weak rows (lw and uw come first)."""
    store, rows_l, rows_u = step_store(channels=channels)
    generator, plan = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    views = A.augment_views(store.to(device), rows_l, rows_u, VIEWS, generator, plan, True)
    return views.cpu(), len(rows_l) + len(rows_u)


@pytest.mark.parametrize("channels", [1, 3])
def test_device_augmentation_matches_the_cpu(channels, monkeypatch):
    """The same random numbers (CPU generators) give the CPU's views on the GPU: weak views
    exactly (gathers), strong views up to float rounding of the GPU kernels (e.g. a fused
    multiply-add moving a geometric op's source pixel at an exact tie).

    TF32 is switched off on purpose: Sharpness is a depthwise convolution, which cuDNN runs in
    TF32 by default (10-bit mantissa); this compares the arithmetic, the next test bounds TF32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu, weak = _views_on("cpu", channels)
    cuda, _ = _views_on("cuda", channels)
    assert torch.equal(cuda[:weak], cpu[:weak])
    diff = (cuda[weak:] - cpu[weak:]).abs()
    assert (diff > 1e-5).float().mean().item() < 0.005
    assert diff.mean().item() < 1e-3


def test_tf32_moves_strong_views_by_less_than_one_level():
    """With cuDNN's default TF32, a strong view's pixels stay within half a uint8 level of the
    CPU's, apart from the few exact-tie pixels of the geometric ops (as above)."""
    assert torch.backends.cudnn.allow_tf32  # torch's default, what training uses
    cpu, weak = _views_on("cpu", 3)
    cuda, _ = _views_on("cuda", 3)
    diff = (cuda[weak:] - cpu[weak:]).abs()
    assert (diff > 0.5 / 255).float().mean().item() < 0.005


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


# ---------------------------------------------------------------------- numbers of a step
def _wrn_trainer(tmp_path, name: str, *overrides: str):
    """WRN-28-2 on random 32x32 images through the real builder, 16 + 7 x 16 per step."""
    cfg = load_config(None, [
        "model.arch=wrn28_2", "algorithm.name=interlude", "train.batch_size=16", "train.mu=7",
        "train.device=cuda", "train.progress=false", f"train.out_dir={tmp_path}", *overrides,
    ])
    (tmp_path / name).mkdir()
    return build_trainer(cfg, tmp_path / name, data=synthetic_data(labeled=64, unlabeled=512))


def test_wrn_step_in_bf16_matches_fp32(tmp_path, monkeypatch):
    """The same first step (same weights, same batch) in fp32 and in bf16 autocast: the losses
    agree within 3 % and the weights after the update within bf16's precision.

    bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %); through 28 layers the logits
    move by about 1 %, the loss (about 2.3 at random weights) by less than 3 %. TF32 is off so
    that fp32 is the reference arithmetic."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fp32 = _wrn_trainer(tmp_path, "fp32", "train.precision=fp32")
    bf16 = _wrn_trainer(tmp_path, "bf16", "train.precision=bf16", "train.channels_last=true")
    assert bf16.autocast and not fp32.autocast
    for a, b in zip(fp32.model.parameters(), bf16.model.parameters(), strict=True):
        assert torch.equal(a, b)
    loss32 = fp32.train_step(0)["loss"].item()
    loss16 = bf16.train_step(0)["loss"].item()
    assert math.isfinite(loss32) and 1.0 < loss32 < 5.0
    assert abs(loss16 - loss32) <= 0.03 * loss32, (loss16, loss32)
    worst = max((a - b).abs().max().item() for a, b in
                zip(fp32.model.parameters(), bf16.model.parameters(), strict=True))
    assert worst < 1e-2, worst  # lr 0.03 x a gradient that differs by a few %


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_matches_eager(tmp_path, monkeypatch, mode):
    """Inductor's step (and its CUDA-graph replay) equals the eager step: the same losses over
    3 steps and the same weights after them, within fp32 reordering of reductions (1e-3).

    TF32 is off: with it, eager and inductor may pick different cuDNN algorithms, each rounding
    inputs to 10 bits, which moves a loss by about 1e-3 on its own."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager = _trainer_small(tmp_path, "eager", "train.compile=false")
    compiled = _trainer_small(tmp_path, "compiled", "train.compile=true",
                              f"train.compile_mode={mode}")
    assert compiled.train_model is not compiled.model
    for step in range(3):
        a = eager.train_step(step)["loss"].item()
        b = compiled.train_step(step)["loss"].item()
        assert abs(a - b) <= 1e-3 * max(1.0, abs(a)), (step, a, b)
    for (key, a), b in zip(eager.model.state_dict().items(),
                           compiled.model.state_dict().values(), strict=True):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (key, (a - b).abs().max().item())


def _trainer_small(tmp_path, name: str, *overrides: str):
    cfg = load_config(None, [
        "data.name=digits", "model.width=8", "train.batch_size=8", "train.mu=2",
        "algorithm.name=interlude", "train.device=cuda", "train.precision=fp32",
        f"train.out_dir={tmp_path}", "train.progress=false", *overrides,
    ])
    (tmp_path / name).mkdir()
    return build_trainer(cfg, tmp_path / name)


def test_checkpoint_of_more_gpus_resumes_here(tmp_path):
    """A checkpoint written where more GPUs were visible (more CUDA generator states than
    devices here) resumes: the states of the missing devices are dropped."""
    trainer = _trainer_small(tmp_path, "run", "train.steps=4", "train.checkpoint_interval=2",
                             "train.eval_interval=2")
    trainer.fit(stop_after=2)
    checkpoint = Checkpoint.load(trainer.run_dir.last)
    states = checkpoint.training["rng"]["cuda"]
    checkpoint.training["rng"]["cuda"] = [*states, *[states[0]] * 7]  # as if from 8 more GPUs
    resumed = _trainer_small(tmp_path, "resumed", "train.steps=4", "train.checkpoint_interval=2",
                             "train.eval_interval=2")
    resumed.restore(checkpoint)
    assert resumed.step == 2
    assert torch.equal(torch.cuda.get_rng_state(0), states[0])
