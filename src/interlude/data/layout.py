"""Batch layout: the order in which the views of a step go through the network.

Embedding fusion mixes each row with the *next* row of the forward batch, so the order decides who
is fused with whom. Views are concatenated in *natural order* (``lw``, ``uw``, ``ls``, ``us``,
leaving out views an algorithm does not use); a :class:`Layout` holds the permutation to the
forward order and its inverse, both built once per run with tensor ops (no per-sample loops).

- ``interdigitated`` (InterLUDE): per labeled item i,
  ``[lw_i, uw_i1..uw_imu, ls_i, us_i1..us_imu]``, so lw_i's fusion partner is uw_i1, its own
  first paired unlabeled image of the same (weak) view, and ls_i's is us_i1.
- ``blocked`` (FixMatch): all labeled rows, then all unlabeled rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interlude.errors import ConfigError

VIEW_ORDER = ("lw", "uw", "ls", "us")
LABELED_VIEWS = ("lw", "ls")


@dataclass(frozen=True)
class Layout:
    """Permutation from natural order to forward order, and back."""

    views: tuple[str, ...]
    batch_size: int
    mu: int
    order: torch.Tensor
    """``x_forward = x_natural[order]``."""
    inverse: torch.Tensor
    """``logits_natural = logits_forward[inverse]``."""
    slices: dict[str, slice]
    """Rows of each view in natural order."""

    def to(self, device: torch.device | str) -> Layout:
        return Layout(
            self.views, self.batch_size, self.mu, self.order.to(device),
            self.inverse.to(device), self.slices,
        )


def rows_per_item(view: str, mu: int) -> int:
    return 1 if view in LABELED_VIEWS else mu


def build_layout(views: tuple[str, ...], batch_size: int, mu: int, kind: str) -> Layout:
    """Build the permutation for ``views`` (any subset of lw, uw, ls, us) of one step."""
    unknown = set(views) - set(VIEW_ORDER)
    if unknown:
        raise ConfigError(f"unknown views {sorted(unknown)}; valid views are {VIEW_ORDER}")
    views = tuple(v for v in VIEW_ORDER if v in views)
    slices: dict[str, slice] = {}
    start = 0
    for view in views:
        size = batch_size * rows_per_item(view, mu)
        slices[view] = slice(start, start + size)
        start += size
    if kind == "interdigitated":
        per_item = [
            slices[v].start
            + torch.arange(batch_size)[:, None] * rows_per_item(v, mu)
            + torch.arange(rows_per_item(v, mu))[None, :]
            for v in views
        ]
        order = torch.cat(per_item, dim=1).reshape(-1)
    elif kind == "blocked":
        labeled_first = [v for v in views if v in LABELED_VIEWS] + [
            v for v in views if v not in LABELED_VIEWS
        ]
        order = torch.cat([torch.arange(slices[v].start, slices[v].stop) for v in labeled_first])
    else:
        raise ConfigError(f"unknown layout '{kind}'; use interdigitated or blocked")
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return Layout(views, batch_size, mu, order, inverse, slices)
