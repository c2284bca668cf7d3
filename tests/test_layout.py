"""Batch layout invariants: fusion partners and un-permutation."""

from __future__ import annotations

import pytest
import torch

from interlude.data.layout import build_layout
from interlude.errors import ConfigError

ALL_VIEWS = ("lw", "uw", "ls", "us")


def natural_tags(layout):
    """A (view, item, j) tag per natural-order row."""
    tags = []
    for view in layout.views:
        per_item = 1 if view in ("lw", "ls") else layout.mu
        for i in range(layout.batch_size):
            for j in range(per_item):
                tags.append((view, i, j))
    return tags


@pytest.mark.parametrize("batch_size,mu", [(1, 1), (3, 2), (4, 7), (64, 7)])
def test_interdigitated_labeled_partner_is_own_first_unlabeled_of_same_view(batch_size, mu):
    layout = build_layout(ALL_VIEWS, batch_size, mu, "interdigitated")
    tags = natural_tags(layout)
    forward = [tags[k] for k in layout.order.tolist()]
    n = len(forward)
    for r, (view, i, _) in enumerate(forward):
        partner = forward[(r + 1) % n]
        if view == "lw":
            assert partner == ("uw", i, 0)
        if view == "ls":
            assert partner == ("us", i, 0)


def test_interdigitated_order_per_item():
    layout = build_layout(ALL_VIEWS, 2, 2, "interdigitated")
    forward = [natural_tags(layout)[k] for k in layout.order.tolist()]
    assert forward[:6] == [
        ("lw", 0, 0), ("uw", 0, 0), ("uw", 0, 1), ("ls", 0, 0), ("us", 0, 0), ("us", 0, 1),
    ]
    assert forward[6] == ("lw", 1, 0)


@pytest.mark.parametrize("kind", ["interdigitated", "blocked"])
@pytest.mark.parametrize("views", [ALL_VIEWS, ("lw", "uw", "us"), ("lw",)])
def test_unpermute_restores_natural_order(kind, views):
    layout = build_layout(views, 5, 3, kind)
    x = torch.arange(len(layout.order)) * 10
    forward = x.index_select(0, layout.order)
    assert torch.equal(forward.index_select(0, layout.inverse), x)
    assert sorted(layout.order.tolist()) == list(range(len(x)))  # a permutation


def test_blocked_puts_all_labeled_first():
    layout = build_layout(ALL_VIEWS, 3, 2, "blocked")
    tags = natural_tags(layout)
    forward_views = [tags[k][0] for k in layout.order.tolist()]
    assert forward_views == ["lw"] * 3 + ["ls"] * 3 + ["uw"] * 6 + ["us"] * 6


def test_view_slices_cover_natural_order():
    layout = build_layout(("us", "lw", "uw"), 4, 3, "interdigitated")
    assert layout.views == ("lw", "uw", "us")
    assert layout.slices == {"lw": slice(0, 4), "uw": slice(4, 16), "us": slice(16, 28)}


def test_unknown_layout_rejected():
    with pytest.raises(ConfigError, match="unknown layout"):
        build_layout(ALL_VIEWS, 2, 2, "zigzag")
