"""Backbone sizes: exact parameter counts against the reference networks."""

from __future__ import annotations

import pytest
import torch

from interlude.config import section_options
from interlude.nets import build_net
from interlude.nets.wrn import blocks_per_group


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def wrn_params_by_hand(widen: int, num_groups: int, num_classes: int, in_ch: int = 3) -> int:
    """Count a WRN with 4 blocks per group from its layer shapes.

    Block(i, o): BN(i) + conv3x3(i, o) + BN(o) + conv3x3(o, o) [+ 1x1 shortcut(i, o) if i != o];
    the first block of a group changes shape (the bn1 of such a block exists, as in USB, even when
    it is not applied). No conv biases; final BN + linear head.
    """
    channels = [16] + [16 * widen * 2**g for g in range(num_groups)]
    total = in_ch * 16 * 9  # stem
    for g in range(num_groups):
        i, o = channels[g], channels[g + 1]
        total += 2 * i + i * o * 9 + 2 * o + o * o * 9 + i * o  # first block, with shortcut
        total += 3 * (2 * o + o * o * 9 + 2 * o + o * o * 9)  # 3 more blocks
    c = channels[-1]
    return total + 2 * c + c * num_classes + num_classes


@pytest.mark.parametrize(
    ("arch", "resolution", "num_classes", "expected"),
    [
        ("wrn28_2", 32, 10, 1_467_610),
        ("wrn28_8", 32, 10, 23_354_842),
        ("wrn28_8", 32, 100, 23_401_012),  # the CIFAR-100 figure usually quoted
        ("wrn37_2", 96, 10, 5_929_434),  # authors' WideResNetVar / USB wrn_var_37_2
    ],
)
def test_wrn_parameter_counts(arch, resolution, num_classes, expected):
    model = build_net(section_options("model", arch=arch), num_classes, 3, resolution)
    assert n_params(model) == expected


@pytest.mark.parametrize(
    ("arch", "widen", "groups"), [("wrn28_2", 2, 3), ("wrn28_8", 8, 3), ("wrn37_2", 2, 4)]
)
def test_wrn_counts_match_layer_shapes(arch, widen, groups):
    model = build_net(section_options("model", arch=arch), 10, 3, 32)
    assert [len(g) for g in model.groups] == [4] * groups
    assert n_params(model) == wrn_params_by_hand(widen, groups, 10)


def test_wrn37_2_structure_and_fusion_point():
    model = build_net(section_options("model", arch="wrn37_2"), 10, 3, 96)
    assert model.feature_dim == 256
    assert model.fusion_index == 3  # before the 4th (last) group, as in the authors' code
    seen = {}

    def hook(name):
        def fn(_module, inputs, _output):
            seen[name] = tuple(inputs[0].shape)

        return fn

    model.fusion.register_forward_hook(hook("fusion"))
    model.head_norm.register_forward_hook(hook("head"))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 10)
    assert seen["fusion"] == (2, 128, 12, 12)  # after 3 stride-2 groups: 96 -> 12
    assert seen["head"] == (2, 256, 6, 6)
    other = build_net(section_options("model", arch="wrn37_2", fusion_layer=1), 10, 3, 96)
    assert other.fusion_index == 1


def test_blocks_per_group():
    assert blocks_per_group(28, 3) == 4
    assert blocks_per_group(37, 4) == 4
    assert blocks_per_group(40, 3) == 6
    with pytest.raises(ValueError):
        blocks_per_group(37, 3)


def test_small_cnn_parameter_count():
    w, k = 32, 10  # default width, 10 classes, 1 input channel

    def conv_bn(i, o):
        return i * o * 9 + 2 * o  # bias-free 3x3 conv + BN affine

    expected = (
        conv_bn(1, w)  # stem
        + conv_bn(w, w)
        + conv_bn(w, 2 * w)
        + conv_bn(2 * w, 2 * w)
        + conv_bn(2 * w, 4 * w)
        + conv_bn(4 * w, 4 * w)
        + 4 * w * k
        + k
    )
    assert expected == 288_170
    model = build_net(section_options("model", arch="small_cnn"), k, 1, 28)
    assert n_params(model) == expected
