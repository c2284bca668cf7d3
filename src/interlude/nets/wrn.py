"""Wide ResNets as used by FixMatch/USB and InterLUDE.

WRN-28-2 / WRN-28-8 (CIFAR, 3 groups) and the WRN-37-2 variant (STL-10, 4 groups, first stride 2).
BN momentum 0.001, LeakyReLU(0.1), Kaiming-normal (fan_out) convolutions, Xavier-normal classifier,
convolutions without bias. The fusion point sits between residual groups, by default before the
last one, as in the authors' code.

Every variant has 4 residual blocks per group. With ``G`` groups of ``n`` blocks the depth counts
the stem, two convolutions per block and one 1x1 shortcut per group: ``depth = 2 n G + G + 1``,
so WRN-28 is 3 groups x 4 blocks and WRN-37 is 4 groups x 4 blocks (stem 16 channels, then 16w,
32w, 64w[, 128w] per group, w = widen). WRN-37-2 is the authors'
STL-10 ``WideResNetVar`` (which they build with ``depth=28``, i.e. 4 blocks per group) and USB's
``wrn_var_37_2``. At 10 classes: WRN-28-2 1,467,610, WRN-28-8 23,354,842 (23,401,012 at 100
classes) and WRN-37-2 5,929,434 parameters. (USB gives the stem convolution a bias, +16; the
authors' code does not, and neither do we.)
"""

from __future__ import annotations

from torch import nn

from interlude.config import ModelConfig, register_backbone
from interlude.nets.fusion import EmbeddingFusion
from interlude.nets.staged import StagedNet

BN_MOMENTUM = 0.001
LEAKY_SLOPE = 0.1


class BasicBlock(nn.Module):
    """Pre-activation residual block (BN-LReLU-conv x2) with a 1x1 shortcut when shapes change."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, activate_before_residual: bool = False
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, momentum=BN_MOMENTUM)
        self.relu1 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM)
        self.relu2 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.equal_in_out = in_ch == out_ch and stride == 1
        self.shortcut = (
            None if self.equal_in_out else nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)
        )
        self.activate_before_residual = activate_before_residual

    def forward(self, x):
        if self.equal_in_out:
            return x + self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        if self.activate_before_residual:
            x = self.relu1(self.bn1(x))
        # as in FixMatch/USB: a shape-changing block without pre-activation convolves raw x
        out = self.conv2(self.relu2(self.bn2(self.conv1(x))))
        return self.shortcut(x) + out


def _group(n: int, in_ch: int, out_ch: int, stride: int, activate_first: bool) -> nn.Sequential:
    blocks = [BasicBlock(in_ch, out_ch, stride, activate_first)]
    blocks += [BasicBlock(out_ch, out_ch, 1) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class WideResNet(StagedNet):
    """WRN-depth-widen with ``len(strides)`` residual groups (see :func:`blocks_per_group`)."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 28,
        widen: int = 2,
        in_channels: int = 3,
        strides: tuple[int, ...] = (1, 2, 2),
        fusion_layer: int = -1,
    ) -> None:
        n = blocks_per_group(depth, len(strides))
        channels = [16] + [16 * widen * 2**g for g in range(len(strides))]
        stem = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        groups = [
            _group(n, channels[g], channels[g + 1], strides[g], activate_first=(g == 0))
            for g in range(len(strides))
        ]
        head_norm = nn.Sequential(
            nn.BatchNorm2d(channels[-1], momentum=BN_MOMENTUM),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )
        super().__init__(stem, groups, head_norm, channels[-1], num_classes, fusion_layer)
        init_weights(self)


def blocks_per_group(depth: int, num_groups: int) -> int:
    """Residual blocks per group for a WRN of ``depth`` with ``num_groups`` groups.

    ``depth = 2 * n * G + G + 1`` (stem, 2 convolutions per block, a 1x1 shortcut per group):
    ``(28, 3) -> 4`` as the usual ``(depth - 4) / 6``, and ``(37, 4) -> 4``.
    """
    n, rem = divmod(depth - 1 - num_groups, 2 * num_groups)
    if rem or n < 1:
        raise ValueError(
            f"WRN depth {depth} does not fit {num_groups} groups (need 2*n*{num_groups} + "
            f"{num_groups + 1})"
        )
    return n


def init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


def wrn28_2(num_classes: int, in_channels: int = 3, fusion_layer: int = -1) -> WideResNet:
    return WideResNet(num_classes, 28, 2, in_channels, (1, 2, 2), fusion_layer)


def wrn28_8(num_classes: int, in_channels: int = 3, fusion_layer: int = -1) -> WideResNet:
    return WideResNet(num_classes, 28, 8, in_channels, (1, 2, 2), fusion_layer)


def wrn37_2(num_classes: int, in_channels: int = 3, fusion_layer: int = -1) -> WideResNet:
    """STL-10 variant: 4 groups of 4 blocks (16 -> 32 -> 64 -> 128 -> 256 channels), strides
    2, 2, 2, 2 (96 px -> 6 px before pooling); fusion before the 4th group by default."""
    return WideResNet(num_classes, 37, 2, in_channels, (2, 2, 2, 2), fusion_layer)


__all__ = ["EmbeddingFusion", "WideResNet", "wrn28_2", "wrn28_8", "wrn37_2"]


_WRN = {"wrn28_2": wrn28_2, "wrn28_8": wrn28_8, "wrn37_2": wrn37_2}


@register_backbone("wrn", archs=tuple(_WRN))
def build_wrn(arch: str, cfg: ModelConfig, num_classes: int, in_channels: int,
              resolution: int) -> WideResNet:
    return _WRN[arch](num_classes, in_channels, cfg.fusion_layer)
