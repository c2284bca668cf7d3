"""The one place where a step's views are laid out, forwarded and sliced back.

Every algorithm goes through :func:`forward_views`, so layout, fusion and un-permutation are
implemented once; building the views is the input pipeline's job
(:mod:`interlude.train.input_pipeline`).
"""

from __future__ import annotations

import torch
from torch import nn

from interlude.algorithms.base import ViewLogits
from interlude.data.layout import Layout


def permute_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(0, index)`` as one gather that keeps a channels_last input channels_last.

    ``index_select`` returns an NCHW-contiguous result, which would make the first convolution
    convert back to NHWC; selecting rows of the (contiguous) NHWC view avoids that extra copy.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last
    ):
        return x.permute(0, 2, 3, 1).index_select(0, index).permute(0, 3, 1, 2)
    return x.index_select(0, index)


def forward_views(model: nn.Module, x_natural: torch.Tensor, layout: Layout) -> ViewLogits:
    """Forward all views in ``layout`` order as one batch; return logits per view, natural order."""
    logits = model(permute_rows(x_natural, layout.order))
    logits = logits.index_select(0, layout.inverse)
    parts = {view: logits[layout.slices[view]] for view in layout.views}
    return ViewLogits(**parts)
