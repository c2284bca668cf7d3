"""The native ViT: shapes, train-only fusion before the last block, weights, layer-wise lr decay."""

from __future__ import annotations

import pytest
import torch

from interlude.config import ModelConfig, TrainConfig
from interlude.errors import ConfigError
from interlude.nets import build_net
from interlude.nets.vit import vit_param_groups
from interlude.train.optim import build_optimizer


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return build_net(ModelConfig(arch="vit_tiny", **kwargs), 10, 3, 8)


def test_forward_shape_and_fusion_point():
    model = tiny_vit()
    assert model(torch.randn(3, 3, 8, 8)).shape == (3, 10)
    assert model.fusion_index == len(model.blocks) - 1


def test_fusion_only_in_training_mode():
    model = tiny_vit()
    model.fusion.strength = 0.3
    target, others = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        alone = model(target)
        in_batch = model(torch.cat([target, others]))[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(torch.cat([target, others]))[:1], alone, atol=1e-5)


def test_pretrained_weights_load_and_foreign_head_is_skipped(tmp_path):
    source = tiny_vit()
    state = {k: v for k, v in source.state_dict().items()}
    state["head.weight"] = torch.zeros(1000, state["head.weight"].shape[1])  # ImageNet head
    state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "vit.pt"
    torch.save({"model": state}, path)
    loaded = tiny_vit(pretrained=str(path))
    x = torch.randn(2, 3, 8, 8)
    loaded.eval()
    source.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.features(x), source.features(x), atol=1e-6)
    broken = {k: v for k, v in state.items() if not k.startswith("blocks.0.")}
    torch.save(broken, path)
    with pytest.raises(ConfigError, match="does not fit"):
        tiny_vit(pretrained=str(path))


def test_layer_wise_lr_decay_groups():
    model = tiny_vit()
    groups = vit_param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    depth = len(model.blocks)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.head.weight)]["lr"] == 1.0
    assert by_param[id(model.blocks[-1].mlp.fc1.weight)]["lr"] == 0.5
    assert by_param[id(model.patch_embed.proj.weight)]["lr"] == 0.5 ** (depth + 1)
    assert by_param[id(model.pos_embed)]["weight_decay"] == 0.0
    assert by_param[id(model.blocks[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05


def test_adamw_with_layer_decay_is_used_for_vit():
    model = tiny_vit()
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, layer_decay=0.65))
    assert isinstance(optimizer, torch.optim.AdamW)
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs[-1] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-3 * 0.65 ** 13)


def test_patch_must_divide_resolution():
    with pytest.raises(ConfigError, match="multiple of the ViT patch"):
        build_net(ModelConfig(arch="vit_tiny"), 10, 3, 9)
