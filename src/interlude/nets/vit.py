"""Vision Transformers (ViT-Tiny/Small/Base) with a fusion point before the last block.

A compact implementation in plain PyTorch whose parameter names match timm's
``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``,
..., ``head``), so a timm or USB checkpoint saved as a state dict loads with
``model.pretrained=PATH`` without installing timm (weights are never downloaded).

Fusion acts on the whole token sequence before the last block (rows of the batch are mixed, as in
the CNNs, with gradients through both terms). The authors' ViT code instead fuses only patch tokens
inside the last block's attention input with stop-gradients; see METHOD.md section 1.4.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from interlude.config import ModelConfig
from interlude.errors import ConfigError
from interlude.nets.fusion import EmbeddingFusion

SIZES = {  # name -> (embed dim, depth, heads)
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


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


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(
        self, num_classes: int, resolution: int, patch: int, dim: int, depth: int, heads: int,
        in_channels: int = 3, fusion_layer: int = -1,
    ) -> None:
        super().__init__()
        if resolution % patch:
            raise ConfigError(f"image size {resolution} is not a multiple of the ViT patch {patch}")
        index = fusion_layer if fusion_layer >= 0 else depth + fusion_layer
        if not 0 <= index < depth:
            raise ConfigError(f"model.fusion_layer={fusion_layer} is outside the {depth} blocks")
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (resolution // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.fusion = EmbeddingFusion()
        self.fusion_index = index
        self.feature_dim = dim
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init)

    def features(self, x: torch.Tensor) -> torch.Tensor:
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


def build_vit(
    arch: str, cfg: ModelConfig, num_classes: int, in_channels: int, resolution: int
) -> VisionTransformer:
    """``vit_tiny|vit_small|vit_base``; patch 2 up to 32 px (as USB's ViT-S/2), else 16."""
    if arch not in SIZES:
        raise ConfigError(f"unknown ViT '{arch}'; available: {', '.join(SIZES)}")
    dim, depth, heads = SIZES[arch]
    patch = 2 if resolution <= 32 else 16
    model = VisionTransformer(num_classes, resolution, patch, dim, depth, heads, in_channels,
                              cfg.fusion_layer)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    return model


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Load a timm-named state dict; a classifier head of another size is left at random init."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.pretrained file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith("head.") and
                                                    own.get(k, v).shape != v.shape)}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    if mismatched or missing:
        raise ConfigError(
            f"{path} does not fit this ViT (shape mismatch: {mismatched[:3]}, missing: "
            f"{missing[:3]}); check model.arch and data.resolution"
        )
    model.load_state_dict(state, strict=False)


def is_vit(model: nn.Module) -> bool:
    return isinstance(model, VisionTransformer)


def vit_param_groups(
    model: VisionTransformer, lr: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Layer-wise lr decay: lr * layer_decay**(depth + 1 - layer); no decay on norms/biases/tokens.

    Layer 0 is the embedding (patch, cls, pos), blocks are 1..depth, the final norm and head are
    depth + 1 (full lr).
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
