"""Optimizer groups, the cosine(7/16) schedule, and the EMA update."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from interlude.config import TrainConfig, section_options
from interlude.errors import ConfigError
from interlude.nets import SmallCNN, build_net
from interlude.train.ema import ModelEMA
from interlude.train.optim import (
    build_optimizer,
    build_scheduler,
    cosine_factor,
    param_groups,
)


def test_no_weight_decay_on_batchnorm_and_bias():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    no_decay, decay = param_groups(model, lr=0.1, weight_decay=5e-4)  # timm's order
    assert decay["lr"] == no_decay["lr"] == 0.1
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)
    }


def test_cosine_schedule_values():
    assert cosine_factor(0, 100) == 1.0
    assert cosine_factor(100, 100) == pytest.approx(math.cos(7 * math.pi / 16))  # ~0.195
    assert cosine_factor(50, 100) == pytest.approx(math.cos(7 * math.pi / 32))
    assert cosine_factor(300, 100, cycles=1.0) == 0.0  # floored at zero


def test_scheduler_and_sgd_settings():
    model = SmallCNN(3, width=4)
    cfg = TrainConfig(steps=10, lr=0.03)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03 * math.cos(7 * math.pi / 16))


def test_ema_matches_per_tensor_reference_and_copies_buffers():
    torch.manual_seed(0)
    model = SmallCNN(3, width=4)
    ema = ModelEMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for b in model.buffers():
            if b.dtype.is_floating_point:
                b.add_(2.0)
    ema.update(model)
    for name, value in ema.module.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(model.named_parameters())[name]
        assert torch.allclose(value, expected, atol=1e-6)
    for name, value in ema.module.named_buffers():
        assert torch.equal(value, dict(model.named_buffers())[name])
    assert not any(p.requires_grad for p in ema.module.parameters())


def tiny_vit():
    torch.manual_seed(0)
    return build_net(section_options("model", arch="timm/vit_tiny_patch16_224", patch_size=2), 10, 3, 8)


def test_vit_layer_decay_groups_from_timm():
    """BEiT/USB rule by timm's group_matcher: lr * decay**(depth + 1 - layer); embeddings are layer
    0, block i layer i + 1 (the final norm goes with the last block), the head the full lr."""
    model = tiny_vit()
    groups = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    depth = len(model.blocks)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.head.weight)]["lr"] == 1.0
    assert by_param[id(model.norm.weight)]["lr"] == 0.5
    assert by_param[id(model.blocks[-1].mlp.fc1.weight)]["lr"] == 0.5
    assert by_param[id(model.blocks[0].mlp.fc1.weight)]["lr"] == 0.5 ** depth
    assert by_param[id(model.patch_embed.proj.weight)]["lr"] == 0.5 ** (depth + 1)
    for no_decay in (model.pos_embed, model.cls_token, model.blocks[0].norm1.weight,
                     model.blocks[0].attn.qkv.bias):
        assert by_param[id(no_decay)]["weight_decay"] == 0.0
    assert by_param[id(model.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_adamw_with_layer_decay_and_cosine_schedule():
    model = tiny_vit()
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, layer_decay=0.65, steps=10)
    optimizer = build_optimizer(model, cfg)
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * 0.65 ** 13)
    scheduler = build_scheduler(optimizer, cfg)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    factor = math.cos(7 * math.pi / 16)
    assert sorted({g["lr"] for g in optimizer.param_groups})[0] == pytest.approx(
        1e-3 * 0.65 ** 13 * factor)


def test_layer_decay_on_a_builtin_cnn_is_a_config_error():
    with pytest.raises(ConfigError, match="train.layer_decay=0.5 needs .*timm"):
        build_optimizer(SmallCNN(3, width=4), TrainConfig(optimizer="adamw", layer_decay=0.5))
