"""The training step's hot path: no host synchronisation, fused EMA, one-gather layout, compile.

A host read of a device value (``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``) stalls the
CPU until the GPU has caught up, so the loop may only do it at log/eval/checkpoint intervals. On
CUDA the check uses ``torch.cuda.set_sync_debug_mode("error")``; on CPU (no such mode) those
tensor methods are patched to record any call made while the loop is between intervals.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from interlude.algorithms import algorithm_names
from interlude.config import load_config
from interlude.data.layout import build_layout
from interlude.nets.small_cnn import SmallCNN
from interlude.train import build_trainer
from interlude.train.ema import ModelEMA
from interlude.train.forward import forward_views, permute_rows
from interlude.train.loop import Trainer

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")
HOST_SIDE_CODE = (
    os.path.join("interlude", "data", "sampler.py"),
    os.path.join("torch", "utils", "data", ""),
)
"""Host-side by design (indices, DataLoader bookkeeping): never touches device tensors."""
INTERVAL_WORK = ("_log_train", "_evaluate", "save_checkpoint", "summary")
"""Trainer methods that run once per interval and may read values on the host."""


def _available_algorithms() -> list[str]:
    names = []
    for name in algorithm_names():
        try:
            importlib.import_module(f"interlude.algorithms.{name}")
        except ImportError:
            continue
        names.append(name)
    return names


class HostReadRecorder:
    """Records host reads of tensors while ``active``; interval work switches it off."""

    def __init__(self, exempt: tuple[str, ...] = HOST_SIDE_CODE) -> None:
        self.exempt = exempt
        self.active = False
        self.calls: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._guard(name, getattr(torch.Tensor, name)))
        for name in INTERVAL_WORK:
            monkeypatch.setattr(Trainer, name, self._paused(getattr(Trainer, name)))

    def _guard(self, name, original):
        def guard(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            host_side = any(part in frame.f_code.co_filename for part in self.exempt)
            if self.active and not host_side:
                self.calls.append(f"Tensor.{name} at {where}")
            return original(tensor, *args, **kwargs)

        return guard

    def _paused(self, method):
        @functools.wraps(method)
        def paused(*args, **kwargs):
            with self.switched(False):
                return method(*args, **kwargs)

        return paused

    @contextmanager
    def switched(self, active: bool):
        previous, self.active = self.active, active
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_sync_debug_mode("error" if active else 0)
        try:
            yield
        finally:
            self.active = previous
            if cuda:
                torch.cuda.set_sync_debug_mode("error" if previous else 0)


def _trainer(tmp_path: Path, *overrides: str) -> Trainer:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config(None, [
        "data.name=digits", "model.width=8", "train.batch_size=8", "train.mu=2",
        "train.steps=9", "train.log_interval=4", "train.eval_interval=8",
        "train.checkpoint_interval=8", "train.progress=false", f"train.device={device}",
        f"train.out_dir={tmp_path}", *overrides,
    ])
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    return build_trainer(cfg, run_dir)


@pytest.mark.parametrize("augment_on", ["device", "workers"])
@pytest.mark.parametrize("algorithm", _available_algorithms())
def test_training_steps_never_read_device_values(tmp_path, monkeypatch, algorithm, augment_on):
    trainer = _trainer(
        tmp_path, f"algorithm.name={algorithm}", f"train.augment_on={augment_on}",
        "train.num_workers=0",
    )
    trainer.fit(stop_after=1)  # warm-up: one-time initialisation may synchronise
    recorder = HostReadRecorder()
    recorder.install(monkeypatch)
    with recorder.switched(True):
        trainer.fit()
    assert trainer.step == 9
    assert recorder.calls == [], "host sync in the hot path:\n" + "\n".join(recorder.calls)


def test_device_augmentation_plans_ops_on_the_host(tmp_path, monkeypatch):
    """Laying a batch out by RandAugment op needs the plan on the host; the op plan must
    therefore come from a CPU generator, so that on CUDA no device value is read (no sync)."""
    from interlude.data import augment
    from interlude.train import input_pipeline

    trainer = _trainer(tmp_path, "algorithm.name=fixmatch")
    seen = []
    original = augment.augment_views

    def spy(images, rows_l, rows_u, views, generator, plan_generator, *args, **kwargs):
        seen.append(plan_generator)
        return original(images, rows_l, rows_u, views, generator, plan_generator, *args,
                        **kwargs)

    monkeypatch.setattr(input_pipeline, "augment_views", spy)
    trainer.train_step(0)
    assert seen and all(g is not None and g.device.type == "cpu" for g in seen)


def test_recorder_catches_a_host_read(tmp_path, monkeypatch):
    """The check above is not vacuous: an ``.item()`` in a loss is caught."""
    trainer = _trainer(tmp_path, "algorithm.name=supervised")
    original = type(trainer.algorithm).loss

    def loss_with_item(self, logits, batch, step):
        loss, metrics = original(self, logits, batch, step)
        metrics["bad"] = torch.tensor(loss.item())
        return loss, metrics

    monkeypatch.setattr(type(trainer.algorithm), "loss", loss_with_item)
    recorder = HostReadRecorder()
    recorder.install(monkeypatch)
    with recorder.switched(True):
        try:
            trainer.train_step(0)
        except RuntimeError as exc:  # CUDA: sync debug mode "error" raises at the read itself
            assert torch.cuda.is_available() and "synchroniz" in str(exc), exc
        else:
            assert not torch.cuda.is_available(), "sync debug mode let an .item() through"
    assert any("Tensor.item" in call for call in recorder.calls)


# ---------------------------------------------------------------------- EMA
def test_ema_foreach_update_equals_per_tensor_reference(monkeypatch):
    torch.manual_seed(0)
    model = SmallCNN(10, 1, 8)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))
        for buffer in model.buffers():
            buffer.add_(1)
    reference = copy.deepcopy(ema.module)
    with torch.no_grad():
        for ref, param in zip(reference.parameters(), model.parameters(), strict=True):
            ref.copy_(0.9 * ref + 0.1 * param)
        for ref, buffer in zip(reference.buffers(), model.buffers(), strict=True):
            ref.copy_(buffer)

    lerp_calls = []
    original = torch._foreach_lerp_
    monkeypatch.setattr(
        torch, "_foreach_lerp_", lambda *a, **k: lerp_calls.append(1) or original(*a, **k)
    )
    ema.update(model)
    assert len(lerp_calls) == 1, "one fused call for all parameters"
    for (key, value), expected in zip(
        ema.module.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        assert torch.allclose(value, expected, atol=1e-6), key


# ---------------------------------------------------------------------- layout
VIEW_OPS = {
    "view", "_unsafe_view", "slice", "permute", "alias", "detach", "t", "unsqueeze", "squeeze",
    "expand", "as_strided", "select", "_reshape_alias",
}


class OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


class Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        with _disable_current_modes():  # log forward_views' own ops only
            return x.reshape(len(x), -1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_layout_is_one_index_select(channels_last):
    b, mu = 3, 2
    layout = build_layout(("lw", "uw", "ls", "us"), b, mu, "interdigitated")
    n = len(layout.order)
    x = torch.randn(n, 3, 4, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model = Flatten()
    with OpLog() as log:
        logits = forward_views(model, x, layout)
    compute = [op for op in log.ops if op not in VIEW_OPS]
    assert compute == ["index_select", "index_select"], log.ops  # input, then logits back
    assert torch.equal(model.seen, x[layout.order])
    if channels_last:
        assert model.seen.is_contiguous(memory_format=torch.channels_last)
    for view in layout.views:
        assert torch.equal(getattr(logits, view), x[layout.slices[view]].flatten(1))


def test_permute_rows_keeps_memory_format():
    x = torch.randn(6, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    index = torch.tensor([5, 0, 3, 1, 2, 4])
    out = permute_rows(x, index)
    assert torch.equal(out, x[index])
    assert out.is_contiguous(memory_format=torch.channels_last)
    plain = torch.randn(6, 3, 5, 5)
    assert permute_rows(plain, index).is_contiguous()


# ---------------------------------------------------------------------- torch.compile
def test_compile_flag_trains_like_eager(tmp_path, monkeypatch):
    """``train.compile`` wraps the training model only; aot_eager keeps this test to seconds.

    Inductor (the default backend) also works on CPU here but takes ~30 s to compile even the
    tiny model; set INTERLUDE_TEST_INDUCTOR=1 to use it.
    """
    if not os.environ.get("INTERLUDE_TEST_INDUCTOR"):
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    # on CUDA, TF32 rounds convolution inputs to 10 bits, and the two trainers' cuDNN algorithms
    # may differ: that alone moves weights by ~1e-4 (seen on an H200); compare the arithmetic
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    compiled = _trainer(tmp_path / "compiled", "train.compile=true")
    eager = _trainer(tmp_path / "eager")
    assert compiled.train_model is not compiled.model
    for step in range(3):
        compiled.train_step(step)
        eager.train_step(step)
    for (key, a), b in zip(
        compiled.checkpoint().model.items(), eager.checkpoint().model.values(), strict=True
    ):
        assert not key.startswith("_orig_mod"), "checkpoints hold the plain module"
        assert torch.allclose(a, b, atol=1e-4), key
