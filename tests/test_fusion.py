"""Embedding fusion: hand-computed values, gradients, and train-only behaviour."""

from __future__ import annotations

import pytest
import torch

from interlude.config import section_options
from interlude.nets import EmbeddingFusion, build_net, fuse_with_next


def test_fusion_hand_computed():
    h = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    expected = torch.tensor([[1.2, 2.2], [3.2, 4.2], [4.6, 5.6]])  # last row wraps to row 0
    assert torch.allclose(fuse_with_next(h, 0.1), expected)


def test_fusion_gradient_flows_through_both_terms():
    h = torch.tensor([[1.0], [3.0], [5.0]], requires_grad=True)
    fuse_with_next(h, 0.1)[0].sum().backward()
    assert torch.allclose(h.grad, torch.tensor([[0.9], [0.1], [0.0]]))


def test_fusion_module_active_only_in_training():
    fusion = EmbeddingFusion(strength=0.1)
    h = torch.randn(4, 3)
    assert not torch.allclose(fusion.train()(h), h)
    assert torch.equal(fusion.eval()(h), h)
    assert torch.equal(EmbeddingFusion(0.0).train()(h), h)
    assert not torch.allclose(EmbeddingFusion(0.1, at_eval=True).eval()(h), h)


@pytest.mark.parametrize("arch,shape", [("small_cnn", (1, 8, 8)), ("wrn28_2", (3, 32, 32))])
def test_eval_prediction_independent_of_batch_companions(arch, shape):
    torch.manual_seed(0)
    model = build_net(section_options("model", arch=arch, width=8), 10, shape[0], shape[1])
    model.fusion.strength = 0.3
    target = torch.randn(1, *shape)
    batch_a = torch.cat([target, torch.randn(5, *shape)])
    batch_b = torch.cat([torch.randn(3, *shape), target, torch.randn(2, *shape)])
    model.train()
    model(batch_a)  # update BN statistics so eval mode uses non-trivial running stats
    model.eval()
    with torch.no_grad():
        alone = model(target)
        in_a = model(batch_a)[0:1]
        in_b = model(batch_b)[3:4]
    assert torch.allclose(alone, in_a, atol=1e-5)
    assert torch.allclose(alone, in_b, atol=1e-5)
    model.train()
    with torch.no_grad():  # sanity: in training mode the companions do matter
        assert not torch.allclose(model(batch_a)[0:1], model(batch_b)[3:4], atol=1e-5)


def test_fusion_point_is_before_last_group_by_default():
    model = build_net(section_options("model", arch="wrn28_2"), 10, 3, 32)
    assert model.fusion_index == len(model.groups) - 1
    model = build_net(section_options("model", arch="wrn37_2"), 10, 3, 96)
    assert model.fusion_index == 3
