"""Vision Transformers (ViT-Tiny/Small/Base) with a fusion point before the last block.

A compact implementation in plain PyTorch whose parameter names and eval-mode outputs match
timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.attn.qkv``, ..., ``head``; class-token pooling, LayerNorm eps 1e-6, qkv bias), so a timm
or USB checkpoint saved as a state dict loads with ``model.pretrained=PATH`` without installing
timm, and weights are never downloaded. Stochastic depth follows USB's ViTs (drop-path rate 0.1
for tiny, 0.2 for small/base, rising linearly over the blocks; training only).

Patch size: ``model.arch=vit_small_patch16`` names it; a bare ``vit_small`` uses 2 up to 32 px (as
USB's ViT-S/2 at 32 px) and 16 above (ViT-B/16 at 96/224 px), falling back to the largest divisor
of the image size below that when it does not divide it. The choice depends on the config and the
image size only, so a run's checkpoint can always be rebuilt.

Fusion acts on the whole token sequence (class token included) before the last block: rows of the
batch are mixed as in the CNNs, with gradients through both terms. The authors' ViT code instead
fuses only the patch tokens inside the last block's attention input and stops the gradient
through the partner (METHOD.md sections 1.4 and 5.11); we keep one fusion semantics for every
backbone so that a CNN and a ViT run differ only in the backbone.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from interlude.config import ModelConfig
from interlude.errors import ConfigError
from interlude.nets.fusion import EmbeddingFusion

log = logging.getLogger("interlude")

SIZES = {  # name -> (embed dim, depth, heads, drop-path rate as USB)
    "vit_tiny": (192, 12, 3, 0.1),
    "vit_small": (384, 12, 6, 0.2),
    "vit_base": (768, 12, 12, 0.2),
}
_ARCH = re.compile(r"^(vit_tiny|vit_small|vit_base)(?:_patch(\d+))?$")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch per sample with probability ``rate``, rescale the rest."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep) / keep


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rate, training = self.drop_path_rate, self.training
        x = x + drop_path(self.attn(self.norm1(x)), rate, training)
        return x + drop_path(self.mlp(self.norm2(x)), rate, training)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(
        self, num_classes: int, resolution: int, patch: int, dim: int, depth: int, heads: int,
        in_channels: int = 3, fusion_layer: int = -1, drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if resolution % patch:
            raise ConfigError(f"image size {resolution} is not a multiple of the ViT patch {patch}")
        index = fusion_layer if fusion_layer >= 0 else depth + fusion_layer
        if not 0 <= index < depth:
            raise ConfigError(f"model.fusion_layer={fusion_layer} is outside the {depth} blocks")
        self.patch_size = patch
        self.grid_size = resolution // patch
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid_size**2, dim) * 0.02)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, heads, rate) for rate in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.fusion = EmbeddingFusion()
        self.fusion_index = index
        self.feature_dim = dim
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The class token after the final norm ``(N, dim)``."""
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed
        for i, block in enumerate(self.blocks):
            if i == self.fusion_index:
                tokens = self.fusion(tokens)
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def parse_arch(arch: str) -> tuple[str, int | None]:
    """``vit_small`` -> ("vit_small", None); ``vit_small_patch16`` -> ("vit_small", 16)."""
    match = _ARCH.match(arch)
    if match is None or (match.group(2) is not None and int(match.group(2)) < 1):
        raise ConfigError(
            f"unknown ViT '{arch}'; available: {', '.join(SIZES)}, optionally with a patch size "
            "suffix such as vit_small_patch16"
        )
    return match.group(1), int(match.group(2)) if match.group(2) else None


def default_patch(resolution: int) -> int:
    """2 up to 32 px, else 16; the largest divisor of the image size below that if it does not divide."""
    preferred = 2 if resolution <= 32 else 16
    patch = max(p for p in range(1, preferred + 1) if resolution % p == 0)
    if patch != preferred:
        log.warning(
            "ViT: image size %d is not a multiple of %d; using patch %d (%d tokens). Name the patch "
            "in model.arch (e.g. vit_small_patch%d) or set data.resolution to choose otherwise.",
            resolution, preferred, patch, (resolution // patch) ** 2, preferred,
        )
    return patch


def build_vit(
    arch: str, cfg: ModelConfig, num_classes: int, in_channels: int, resolution: int
) -> VisionTransformer:
    """``vit_tiny|vit_small|vit_base[_patchP]`` for ``resolution`` px images; loads cfg.pretrained."""
    size, patch = parse_arch(arch)
    dim, depth, heads, drop_path_rate = SIZES[size]
    patch = patch or default_patch(resolution)
    model = VisionTransformer(num_classes, resolution, patch, dim, depth, heads, in_channels,
                              cfg.fusion_layer, drop_path_rate)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    return model


# --- pretrained weights ------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local ``.pt``/``.pth``/``.safetensors`` file, unwrapped from {"model": ...}."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.pretrained file not found: {path} (weights are never downloaded)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ConfigError("reading .safetensors needs `pip install safetensors`") from exc
        state: object = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors of many kinds: report them as one config error
            raise ConfigError(
                f"cannot read {path} as a weights-only state dict ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); save it with torch.save(model.state_dict())"
            ) from exc
    for key in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubically resize the patch-position grid of ``(1, 1 + g*g, D)`` to ``grid x grid``."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ConfigError(f"pretrained pos_embed has {patches.shape[1]} patch positions, not a square")
    image = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False,
                          antialias=grid < old)
    resized = image.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls, resized], dim=1)


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """Patch-embedding kernel for another channel count: RGB summed for grey, grey split for RGB."""
    if weight.shape[1] == channels:
        return weight
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] == 1:
        return weight.repeat(1, channels, 1, 1) / channels
    raise ConfigError(f"cannot adapt a {weight.shape[1]}-channel patch embedding to {channels} channels")


def adapt_state_dict(state: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Fit a checkpoint to this model: image size, input channels, and a classifier of another size.

    The position grid is resized (as timm/USB do when fine-tuning at another resolution), the
    patch kernel adapted to grey/RGB input, and a head of another number of classes dropped (it
    stays at random init). A different patch size or width cannot be fitted and raises.
    """
    own = model.state_dict()
    state = dict(state)
    kernel = state.get("patch_embed.proj.weight")
    if kernel is not None and kernel.shape[-1] != model.patch_size:
        raise ConfigError(
            f"the pretrained weights use patch {kernel.shape[-1]} but this ViT uses "
            f"{model.patch_size}; set model.arch=<size>_patch{kernel.shape[-1]}"
        )
    if kernel is not None:
        channels = own["patch_embed.proj.weight"].shape[1]
        state["patch_embed.proj.weight"] = adapt_input_channels(kernel, channels)
    pos, own_pos = state.get("pos_embed"), own["pos_embed"]
    if pos is not None and pos.shape[1] != own_pos.shape[1] and pos.shape[-1] == own_pos.shape[-1]:
        state["pos_embed"] = resample_pos_embed(pos, model.grid_size)
    for key in ("head.weight", "head.bias"):
        if key in state and state[key].shape != own[key].shape:
            del state[key]
    return state


def load_pretrained(model: VisionTransformer, path: str | Path) -> None:
    """Load a timm/USB-named state dict into ``model``, or raise a ConfigError saying what does not fit.

    Keys outside the transformer (an MAE decoder, an extra head) are ignored with a warning; a
    missing or differently shaped backbone tensor, or an unknown tensor inside a block (e.g.
    LayerScale), is an error, because loading only part of a backbone silently gives a different
    network.
    """
    state = adapt_state_dict(read_state_dict(path), model)
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    unknown_in_blocks = [k for k in state if k not in own and k.startswith(("blocks.", "patch_embed."))]
    if mismatched or missing or unknown_in_blocks:
        raise ConfigError(
            f"{path} does not fit this ViT (shape mismatch: {mismatched[:3]}, missing: {missing[:3]}, "
            f"unknown block tensors: {unknown_in_blocks[:3]}); check model.arch and data.resolution"
        )
    ignored = sorted(k for k in state if k not in own)
    if ignored:
        log.warning("model.pretrained: ignoring %d tensors not in this ViT: %s", len(ignored),
                    ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


# --- optimisation ------------------------------------------------------------------------------


def is_vit(model: nn.Module) -> bool:
    return isinstance(model, VisionTransformer)


def vit_param_groups(
    model: VisionTransformer, lr: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Layer-wise lr decay (BEiT/MAE/USB): lr * layer_decay**(depth + 1 - layer).

    Layer 0 is the embedding (patch, cls, pos), block i is layer i + 1 (so its scale is
    layer_decay**(depth - i)), the final norm and head are layer depth + 1 (full lr). Norm
    parameters, biases, ``cls_token`` and ``pos_embed`` get no weight decay.
    """
    depth = len(model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith(("patch_embed", "cls_token", "pos_embed")):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = depth + 1
        decay = param.ndim > 1 and name not in ("cls_token", "pos_embed")
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * layer_decay ** (depth + 1 - layer),
        })
        group["params"].append(param)
    return list(groups.values())
