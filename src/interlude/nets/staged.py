"""A backbone made of a stem, residual groups and a linear head, with a fusion point between groups.

Every CNN in interlude is a :class:`StagedNet`, so the fusion point, feature extraction and the
classifier head are handled once.
"""

from __future__ import annotations

import torch
from torch import nn

from interlude.errors import ConfigError
from interlude.nets.fusion import EmbeddingFusion


class StagedNet(nn.Module):
    def __init__(
        self,
        stem: nn.Module,
        groups: list[nn.Module],
        head_norm: nn.Module,
        feature_dim: int,
        num_classes: int,
        fusion_layer: int = -1,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.groups = nn.ModuleList(groups)
        self.head_norm = head_norm
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        n = len(groups)
        index = fusion_layer if fusion_layer >= 0 else n + fusion_layer
        if not 0 <= index < n:
            raise ConfigError(
                f"model.fusion_layer={fusion_layer} is outside this network's {n} residual "
                f"groups; use 0..{n - 1} or -1 (before the last group)"
            )
        self.fusion_index = index
        self.fusion = EmbeddingFusion()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features ``(N, feature_dim)``."""
        h = self.stem(x)
        for i, group in enumerate(self.groups):
            if i == self.fusion_index:
                h = self.fusion(h)
            h = group(h)
        h = self.head_norm(h)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
