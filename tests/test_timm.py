"""timm backbones: the fusion point, eval independence, weights files, offline errors, the inputs a
pretrained backbone implies, optimiser groups are in test_optim.py, resume and exports below."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import interlude
from interlude import InterLUDEClassifier
from interlude.config import load_config, section_options
from interlude.errors import ConfigError
from interlude.export import export_run
from interlude.nets import build_net
from interlude.train import resolve_inputs, run

# (arch, image side, module the default fusion point precedes, number of fusion points)
BACKBONES = [
    ("timm/resnet10t", 16, "layer4", 4),
    ("timm/convnext_atto", 32, "stages.3", 4),
    ("timm/vit_tiny_patch16_224", 8, "blocks.11", 12),
]


def net(arch, side, channels=3, num_classes=10, seed=0, **kwargs):
    torch.manual_seed(seed)
    if arch.startswith("timm/vit"):
        kwargs.setdefault("patch_size", 2)
    return build_net(section_options("model", arch=arch, **kwargs), num_classes, channels, side)


def inputs_of(module):
    """A pre-hook (registered after the fusion's, so it runs after it) recording the input."""
    seen = []
    module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


# ----------------------------------------------------------------------------- fusion
@pytest.mark.parametrize("arch,side,point,count", BACKBONES)
def test_fusion_point_and_hand_computed_mixing(arch, side, point, count):
    model = net(arch, side)
    assert model.fusion_point == point and model.fusion_index == count - 1
    seen = inputs_of(model.get_submodule(point))
    x = torch.randn(4, 3, side, side)
    model.train()
    with torch.no_grad():
        model(x)  # strength 0: the plain input of the fusion point
        model.fusion.strength = 0.25
        model(x)
    plain, fused = seen
    expected = 0.75 * plain + 0.25 * torch.roll(plain, -1, dims=0)  # row r mixed with row r+1
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=0)
    model.eval()
    with torch.no_grad():
        model(x)  # strength 0.25, but eval mode: the identity
        model.fusion.strength = 0.0
        model(x)
    assert torch.equal(seen[-2], seen[-1])


@pytest.mark.parametrize("arch,side,point,count", BACKBONES)
def test_eval_predictions_do_not_depend_on_batch_companions(arch, side, point, count):
    model = net(arch, side)
    model.fusion.strength = 0.3
    target = torch.randn(1, 3, side, side)
    batch_a = torch.cat([target, torch.randn(5, 3, side, side)])
    batch_b = torch.cat([torch.randn(3, 3, side, side), target, torch.randn(2, 3, side, side)])
    model.train()
    with torch.no_grad():
        model(batch_a)  # BatchNorm running statistics become non-trivial
        train_a, train_b = model(batch_a)[:1], model(batch_b)[3:4]
    assert not torch.allclose(train_a, train_b, atol=1e-4)  # in training, companions matter
    ema = copy.deepcopy(model).eval()  # the EMA copy: its hook must call its own fusion
    for evaluated in (model.eval(), ema):
        with torch.no_grad():
            alone = evaluated(target)
            torch.testing.assert_close(evaluated(batch_a)[:1], alone, atol=1e-5, rtol=0)
            torch.testing.assert_close(evaluated(batch_b)[3:4], alone, atol=1e-5, rtol=0)
        model.train()  # the original back in training mode must not switch the copy's fusion on


def test_fusion_layer_counts_stages_and_blocks():
    assert net("timm/resnet10t", 16, fusion_layer=0).fusion_point == "layer1"  # stem left out
    assert net("timm/vit_tiny_patch16_224", 8, fusion_layer=3).fusion_point == "blocks.3"
    with pytest.raises(ConfigError, match=r"fusion_layer=4 is outside the 4 stages/blocks .*"
                                          r"\(layer1, layer2, layer3, layer4\)"):
        net("timm/resnet10t", 16, fusion_layer=4)


def test_state_dict_names_are_timm_own():
    import timm

    model = net("timm/convnext_atto", 32)
    plain = timm.create_model("convnext_atto", num_classes=10)
    assert list(model.state_dict()) == list(plain.state_dict())


def test_earlier_vits_as_timm_names_load_their_checkpoints():
    """`vit_tiny` (earlier versions) was a hand-written ViT with exactly these tensor names; it is
    now written timm/vit_tiny_patch16_224 with patch 2 (at 32 px) and USB's drop path 0.1."""
    model = net("timm/vit_tiny_patch16_224", 32, patch_size=2, drop_path_rate=0.1)
    assert model.patch_embed.patch_size == (2, 2) and model.pos_embed.shape == (1, 257, 192)
    small = net("timm/vit_small_patch16_224", 32, patch_size=4, drop_path_rate=0.2)
    assert small.patch_embed.patch_size == (4, 4)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)  # USB's rate, last block
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    old_names = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                 "norm.weight", "norm.bias", "head.weight", "head.bias"} | {
        f"blocks.{i}.{layer}.{p}" for i in range(12) for layer in per_block
        for p in ("weight", "bias")}
    assert set(model.state_dict()) == old_names


def test_patch_that_does_not_divide_the_image_and_unknown_names():
    with pytest.raises(ConfigError, match="image size 9 is not a multiple of the patch 2"):
        net("timm/vit_tiny_patch16_224", 9)
    with pytest.raises(ConfigError, match="timm has no model of that name. Did you mean "
                                          "timm/resnet10t"):
        net("timm/resnet10x", 16)
    with pytest.raises(ConfigError, match="does not take .*patch_size.*ViTs only"):
        net("timm/resnet10t", 16, patch_size=2)


# ----------------------------------------------------------------------------- weights
def saved_vit(tmp_path: Path, suffix: str) -> tuple[torch.nn.Module, Path]:
    """A ViT-Ti/2 "pretrained" at 16 px with a 1000-class head, saved as the hub would hand it."""
    source = net("timm/vit_tiny_patch16_224", 16, num_classes=1000, seed=1)  # others use seed 0
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"vit{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)  # wrapped, as training scripts save them
    return source, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_with_head_dropped_and_positions_resized(tmp_path, suffix):
    source, path = saved_vit(tmp_path, suffix)
    model = net("timm/vit_tiny_patch16_224", 32, pretrained=str(path))  # 16x16 grid, saved 8x8
    assert model.head.weight.shape == (10, 192)  # a new 10-class head
    for name in ("blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "patch_embed.proj.weight",
                 "cls_token", "norm.weight"):
        assert torch.equal(model.get_parameter(name), source.get_parameter(name)), name
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 192)
    assert torch.equal(model.pos_embed[:, 0], source.pos_embed[:, 0])  # class position kept
    grid = source.pos_embed[:, 1:].reshape(1, 8, 8, 192).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True)  # timm's resample
    torch.testing.assert_close(model.pos_embed[:, 1:], resized.permute(0, 2, 3, 1).reshape(1, 256, 192),
                               atol=1e-5, rtol=0)
    same_size = net("timm/vit_tiny_patch16_224", 16, num_classes=1000, pretrained=str(path))
    assert not torch.equal(same_size.head.weight, source.head.weight)  # dropped even when it fits


def test_weights_files_that_do_not_fit_are_one_line_errors(tmp_path):
    source, path = saved_vit(tmp_path, ".pth")
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.0.")}
    torch.save(partial, tmp_path / "partial.pth")
    cases = [
        ("timm/vit_tiny_patch16_224", tmp_path / "partial.pth",
         r"lacks 12 tensors of timm/vit_tiny_patch16_224 \(e.g. blocks.0.norm1.weight"),
        ("timm/resnet10t", path, "lacks .* tensors of timm/resnet10t .*another model's weights"),
        ("timm/resnet10t", tmp_path / "missing.pth", "model.pretrained file not found: "),
        ("timm/resnet10t", tmp_path / "weights.npz", "expected a .safetensors, .pth"),
        ("timm/resnet10t", tmp_path / "junk.pth", "does not load into timm/resnet10t"),
    ]
    (tmp_path / "weights.npz").write_bytes(b"x")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    damaged = net("timm/resnet10t", 16).state_dict()
    damaged["conv1.0.weight"][0, 0, 0, 0] = float("nan")  # a file that loads but is not finite
    torch.save(damaged, tmp_path / "nan.pth")
    cases.append(("timm/resnet10t", tmp_path / "nan.pth",
                  r"holds NaN/inf values in 1 tensor\(s\) \(e.g. conv1.0.weight\)"))
    whole = net("timm/resnet10t", 16).state_dict()  # integer weights load cast, silently (issue 19)
    whole["conv1.0.weight"] = whole["conv1.0.weight"].round().long()
    torch.save({"state_dict": whole}, tmp_path / "int.pth")
    from safetensors.torch import save_file

    save_file(whole, str(tmp_path / "int.safetensors"))
    for name in ("int.pth", "int.safetensors"):
        cases.append(("timm/resnet10t", tmp_path / name,
                      r"holds integer tensors where timm/resnet10t has float weights \("
                      r"(state_dict\.)?conv1.0.weight\)"))
    for arch, file, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            net(arch, 16, pretrained=str(file))
        assert "\n" not in str(info.value)


def test_offline_pretrained_true_is_one_line_naming_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(ConfigError) as info:
        net("timm/resnet10t", 16, pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert f"cached in {cache}" in message and "model.pretrained=PATH" in message
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))  # nothing was fetched
    clf = InterLUDEClassifier(arch="timm/resnet10t", pretrained=True, steps=1, verbose=0)
    with pytest.raises(ConfigError, match=f"cached in {cache}"):  # the estimator: same path
        clf.fit(np.zeros((4, 8, 8)), np.array([0, 1, -1, -1]))
    assert not hasattr(clf, "model_")


# ----------------------------------------------------------------------------- inputs
def test_pretrained_backbone_decides_size_filter_and_normalisation():
    cfg = resolve_inputs(load_config("configs/stl10_40_vit.yaml"))
    assert cfg.model.arch == "timm/vit_base_patch16_224" and cfg.model.pretrained is True
    assert cfg.data.resolution == 224 and cfg.data.interpolation == "bicubic"
    assert cfg.data.mean == cfg.data.std == [0.5, 0.5, 0.5]
    kept = resolve_inputs(load_config(None, ["model.arch=timm/resnet10t", "model.pretrained=true",
                                             "data.resolution=64", "data.mean=[0.1,0.2,0.3]",
                                             "data.std=[1,1,1]"]))
    assert (kept.data.resolution, kept.data.interpolation) == (64, "bicubic")  # resnet10t: 176
    assert kept.data.mean == [0.1, 0.2, 0.3]
    for unchanged in (["model.arch=timm/resnet10t"], ["model.arch=wrn28_2",
                                                      "model.pretrained=w.pth"]):
        d = resolve_inputs(load_config(None, unchanged)).data
        assert (d.resolution, d.interpolation, d.mean, d.std) == (None, None, None, None)


def test_data_mean_std_and_bicubic_resize_reach_the_data():
    from interlude.data import build_data

    cfg = load_config(None, ["data.resolution=16", "data.interpolation=bicubic",
                             "data.mean=[0.2,0.4,0.6]", "data.std=[0.3,0.3,0.6]"])
    data = build_data(cfg.data)
    assert data.mean == pytest.approx((0.4,)) and data.std == pytest.approx((0.4,))  # averaged
    assert data.interpolation == "bicubic"
    native = build_data(load_config(None, []).data)  # the same split, images at 8x8
    expected = F.interpolate(torch.from_numpy(native.labeled.images.read([0])).float(), size=(16, 16),
                             mode="bicubic", antialias=True).round().clamp(0, 255)
    assert np.array_equal(data.labeled.images.read([0]), expected.numpy().astype(np.uint8))
    plain = build_data(load_config(None, ["data.resolution=16"]).data)
    # bilinear differs
    assert not np.array_equal(data.labeled.images.read([0]), plain.labeled.images.read([0]))


@pytest.mark.parametrize("overrides,message", [
    (["model.pretrained=true"], "applies to timm backbones, not model.arch=auto"),
    (["model.arch=timm/resnet10t", "model.pretrained="], "use true, false or a file path"),
    (["data.mean=[0.5]"], "give both"),
    (["data.mean=[0.5,0.5]", "data.std=[0.5,0.5]"], "must both hold 1 or 3 values"),
    (["data.std=[0,1,1]", "data.mean=[0,0,0]"], r"data.std=\[0.0, 1.0, 1.0\] is out of range"),
    (["data.interpolation=nearest"], "'nearest' is not one of bilinear, bicubic"),
])
def test_input_and_pretrained_keys_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_pretrained_accepts_true_false_and_a_path_not_null():
    def parsed(value):
        return load_config(None, ["model.arch=timm/resnet10t", f"model.pretrained={value}"]).model
    assert parsed("true").pretrained is True and parsed("false").pretrained is False
    assert parsed("weights/r.safetensors").pretrained == "weights/r.safetensors"
    with pytest.raises(ConfigError, match="model.pretrained=None is not allowed"):
        parsed("null")  # earlier versions' spelling of false is gone


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("arch", ["timm/resnet10t", "timm/vit_tiny_patch16_224"])
def test_resumed_timm_run_equals_uninterrupted_run(tiny_overrides, arch):
    base = [*tiny_overrides, f"model.arch={arch}", "train.optimizer=adamw", "train.lr=1e-3",
            "train.eval_interval=12"]
    if "vit" in arch:  # stochastic depth draws from the RNG the checkpoint restores
        base += ["model.patch_size=2", "model.drop_path_rate=0.1", "train.layer_decay=0.65"]
    else:
        base += ["data.resolution=16"]
    whole = run(load_config(None, [*base, "train.run_name=whole"])).run_dir
    chunked_cfg = load_config(None, [*base, "train.run_name=chunked"])
    run(chunked_cfg, stop_after=6)
    chunked = run(chunked_cfg, resume=True).run_dir
    a, b = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (whole, chunked))
    assert a["step"] == b["step"] == 12
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"


def test_resume_needs_neither_the_weights_file_nor_the_network(tiny_overrides, tmp_path):
    """The checkpoint holds every weight: a moved weights file must not stop a resume."""
    source = net("timm/resnet10t", 16, channels=1, num_classes=1000, seed=1)
    weights = tmp_path / "r10t.pth"
    torch.save(source.state_dict(), weights)
    cfg = load_config(None, [*tiny_overrides, "model.arch=timm/resnet10t", "data.resolution=16",
                             f"model.pretrained={weights}", "train.eval_interval=12"])
    first = run(cfg, stop_after=6)
    state = torch.load(first.run_dir / "checkpoints" / "last.pt", weights_only=True)
    weights.unlink()
    with pytest.raises(ConfigError, match="model.pretrained file not found"):
        run(cfg, overwrite=True)  # a fresh start does need it
    result = run(cfg, resume=True)
    assert result.finished and result.weights.step == 12
    assert not torch.equal(state["model"]["conv1.0.weight"], result.weights.model["conv1.0.weight"])


@pytest.fixture(scope="module")
def pretrained_fit(tmp_path_factory):
    """A ResNet-10-T "pretrained" by the test (its weights saved as a hub file would be), then
    fine-tuned by the estimator on digits: the timm path from weights file to exports."""
    folder = tmp_path_factory.mktemp("timm-estimator")
    torch.manual_seed(1)
    import timm

    weights = folder / "resnet10t.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet10t", num_classes=1000).state_dict(), str(weights))
    bunch = load_digits()
    y = np.where(np.arange(300) % 20 == 0, bunch.target[:300], -1)
    clf = InterLUDEClassifier(arch="timm/resnet10t", pretrained=str(weights), resolution=16,
                              steps=4, batch_size=8, mu=2, verbose=0, threads=1, device="cpu",
                              out_dir=str(folder / "run"))
    return clf.fit(bunch.images[:300] / 16.0, y)


def test_estimator_fine_tunes_a_pretrained_timm_backbone(pretrained_fit):
    clf = pretrained_fit
    config = clf.checkpoint_.config
    assert config.model.arch == "timm/resnet10t"
    assert config.data.resolution == 16 and config.data.interpolation == "bicubic"
    imagenet_mean, imagenet_std = (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3
    assert clf.checkpoint_.meta.mean == pytest.approx((imagenet_mean,))  # grey: RGB averaged
    assert clf.checkpoint_.meta.std == pytest.approx((imagenet_std,))
    saved = (clf.run_dir_ / "config.yaml").read_text()
    assert "interpolation: bicubic" in saved and "resolution: 16" in saved
    assert clf.predict_proba(load_digits().images[:5] / 16.0).shape == (5, len(clf.classes_))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_exported_timm_backbone_equals_the_in_memory_model(pretrained_fit, tmp_path, fmt):
    clf = pretrained_fit
    loaded = interlude.load(export_run(clf.run_dir_, fmt, str(tmp_path / fmt)),
                            allow_code=fmt == "torchscript")
    sidecar = json.loads((tmp_path / fmt / "interlude.json").read_text())
    assert sidecar["model"]["arch"] == "timm/resnet10t" and sidecar["interpolation"] == "bicubic"
    assert loaded.interpolation == "bicubic"
    x = torch.randn(6, 1, 16, 16)
    with torch.no_grad():
        expected, got = clf.model_(x), loaded.model(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    images = load_digits().images[:6] / 16.0
    np.testing.assert_allclose(loaded.predict_proba(images), clf.predict_proba(images), atol=1e-5)


# ----------------------------------------------------------------------------- shipped configs
VIT_CONFIGS = {  # file: (dataset, labels per class, algorithm, lr, layer decay)
    "stl10_40_vit": ("stl10", 4, "interlude", 1e-4, 0.65),
    "stl10_100_vit": ("stl10", 10, "interlude", 1e-4, 0.65),
    "stl10_40_vit_plus": ("stl10", 4, "interlude_plus", 1e-4, 0.65),
    "stl10_100_vit_plus": ("stl10", 10, "interlude_plus", 1e-4, 0.65),
    "stl10_40_vit_supervised": ("stl10", 4, "supervised", 1e-4, 0.65),
    "cifar10_40_vit": ("cifar10", 4, "interlude", 5e-4, 0.5),
    "cifar100_200_vit": ("cifar100", 2, "interlude", 5e-4, 0.5),
    "cifar100_400_vit": ("cifar100", 4, "interlude", 5e-4, 0.5),
}


@pytest.mark.parametrize("name", sorted(VIT_CONFIGS))
def test_shipped_vit_configs_hold_the_paper_settings(name):
    dataset, per_class, algorithm, lr, layer_decay = VIT_CONFIGS[name]
    cfg = load_config(f"configs/{name}.yaml")
    t, a = cfg.train, cfg.algorithm
    assert (cfg.data.name, cfg.data.labels_per_class, a.name) == (dataset, per_class, algorithm)
    assert (t.steps, t.batch_size, t.mu) == (204_800, 8, 0 if algorithm == "supervised" else 7)
    assert (t.optimizer, t.lr, t.weight_decay, t.layer_decay, t.ema_decay) == (
        "adamw", lr, 5e-4, layer_decay, 0.0)
    assert cfg.model.fusion_layer == -1
    if algorithm != "supervised":
        assert (a.lambda_dc, a.fusion_strength) == (0.1, 0.1)
    if dataset == "stl10":
        assert (cfg.model.arch, cfg.model.pretrained) == ("timm/vit_base_patch16_224", True)
    else:  # ViT-S/2 at 32 px with USB's weights, as a local file
        assert (cfg.model.arch, cfg.model.patch_size, cfg.data.resolution) == (
            "timm/vit_small_patch16_224", 2, 32)
        assert cfg.model.pretrained.endswith("vit_small_patch2_32_mlp_im_1k_32.pth")


def test_vit_s2_of_the_cifar_configs_builds_with_fusion_before_its_last_block():
    cfg = load_config("configs/cifar100_400_vit.yaml", ["model.pretrained=false"])
    model = build_net(cfg.model, 100, 3, cfg.data.resolution)
    assert model.patch_embed.patch_size == (2, 2) and model.pos_embed.shape == (1, 257, 384)
    assert model.fusion_point == "blocks.11" and len(model.blocks) == 12
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
