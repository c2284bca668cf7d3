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


def test_patch_from_arch_name_and_robust_default(caplog):
    assert build_net(ModelConfig(arch="vit_tiny"), 10, 3, 32).patch_size == 2
    assert build_net(ModelConfig(arch="vit_tiny"), 10, 3, 96).patch_size == 16
    assert build_net(ModelConfig(arch="vit_tiny_patch4"), 10, 3, 32).patch_size == 4
    with caplog.at_level("WARNING", logger="interlude"):
        assert build_net(ModelConfig(arch="vit_tiny"), 10, 3, 40).patch_size == 10  # 16 does not divide
    assert "vit_small_patch16" in caplog.text
    with pytest.raises(ConfigError, match="multiple of the ViT patch"):
        build_net(ModelConfig(arch="vit_tiny_patch2"), 10, 3, 9)
    with pytest.raises(ConfigError, match="unknown ViT"):
        build_net(ModelConfig(arch="vit_huge"), 10, 3, 32)


def test_pretrained_at_another_resolution_and_channel_count(tmp_path):
    source = build_net(ModelConfig(arch="vit_tiny_patch2"), 10, 3, 8)
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    bigger = build_net(ModelConfig(arch="vit_tiny_patch2", pretrained=str(path)), 10, 3, 16)
    assert bigger.pos_embed.shape == (1, 1 + 8 * 8, 192)
    assert torch.equal(bigger.pos_embed[:, 0], source.pos_embed[:, 0])  # class position kept
    grey = build_net(ModelConfig(arch="vit_tiny_patch2", pretrained=str(path)), 10, 1, 8)
    expected = source.patch_embed.proj.weight.sum(1, keepdim=True)
    assert torch.allclose(grey.patch_embed.proj.weight, expected)
    rgb = torch.rand(2, 1, 8, 8)
    grey.eval()
    source.eval()
    with torch.no_grad():  # a grey image repeated to RGB gives the same features
        assert torch.allclose(grey.features(rgb), source.features(rgb.expand(-1, 3, -1, -1)), atol=1e-5)


def test_pretrained_that_cannot_fit_is_a_config_error(tmp_path):
    source = build_net(ModelConfig(arch="vit_tiny_patch2"), 10, 3, 8)
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(ConfigError, match="use patch 2 .*_patch2"):
        build_net(ModelConfig(arch="vit_tiny_patch4", pretrained=str(path)), 10, 3, 8)
    with pytest.raises(ConfigError, match="does not fit"):  # a ViT-S file into a ViT-Ti
        build_net(ModelConfig(arch="vit_small_patch2", pretrained=str(path)), 10, 3, 8)
    state = dict(source.state_dict(), **{"blocks.0.ls1.gamma": torch.ones(192)})  # LayerScale
    torch.save(state, path)
    with pytest.raises(ConfigError, match="unknown block tensors"):
        build_net(ModelConfig(arch="vit_tiny_patch2", pretrained=str(path)), 10, 3, 8)
    with pytest.raises(ConfigError, match="not found"):
        build_net(ModelConfig(arch="vit_tiny", pretrained=str(tmp_path / "nope.pt")), 10, 3, 8)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        build_net(ModelConfig(arch="vit_tiny", pretrained=str(path)), 10, 3, 8)


def test_stochastic_depth_only_in_training():
    model = tiny_vit()
    assert model.blocks[0].drop_path_rate == 0.0 and model.blocks[-1].drop_path_rate == pytest.approx(0.1)
    x = torch.randn(4, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))


def test_matches_timm_vision_transformer():
    """Same names and eval outputs as timm (skipped where timm cannot be imported)."""
    timm = pytest.importorskip("timm")
    for arch, patch, resolution in [("vit_tiny", 2, 32), ("vit_small", 16, 64)]:
        reference = timm.create_model(f"{arch}_patch16_224", pretrained=False, num_classes=10,
                                      img_size=resolution, patch_size=patch).eval()
        ours = build_net(ModelConfig(arch=f"{arch}_patch{patch}"), 10, 3, resolution).eval()
        ours.load_state_dict(reference.state_dict(), strict=True)
        x = torch.randn(2, 3, resolution, resolution)
        with torch.no_grad():
            assert torch.allclose(ours(x), reference(x), atol=1e-5)
