"""A small CNN for 8x8 (digits) and 28x28 (MNIST) grayscale inputs.

Three groups of 3x3 convolutions (widths w, 2w, 4w; the last two halve the resolution), so the
default fusion point (before the last group) sits on a spatial feature map, as in the WRNs.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from interlude.config import ModelConfig, register_backbone
from interlude.nets.staged import StagedNet
from interlude.nets.wrn import LEAKY_SLOPE, init_weights


def _conv_bn(in_ch: int, out_ch: int, stride: int, bn_momentum: float) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_ch, momentum=bn_momentum),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    ]


class SmallCNN(StagedNet):
    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        width: int = 32,
        fusion_layer: int = -1,
        bn_momentum: float = 0.01,
    ) -> None:
        w, m = width, bn_momentum
        stem = nn.Sequential(*_conv_bn(in_channels, w, 1, m))
        groups = [
            nn.Sequential(*_conv_bn(w, w, 1, m)),
            nn.Sequential(*_conv_bn(w, 2 * w, 2, m), *_conv_bn(2 * w, 2 * w, 1, m)),
            nn.Sequential(*_conv_bn(2 * w, 4 * w, 2, m), *_conv_bn(4 * w, 4 * w, 1, m)),
        ]
        super().__init__(stem, groups, nn.Identity(), 4 * w, num_classes, fusion_layer)
        init_weights(self)


class SmallCNNOptions(ModelConfig):
    """Options of the small CNN."""

    width: int = Field(32, ge=1, le=4096)
    """Channels of the first conv block."""


@register_backbone("small_cnn", SmallCNNOptions, archs=("small_cnn",))
def build_small_cnn(arch: str, cfg: SmallCNNOptions, num_classes: int, in_channels: int,
                    resolution: int) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, cfg.width, cfg.fusion_layer)
