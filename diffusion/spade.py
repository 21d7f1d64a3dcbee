"""Normalisation layers of the diffusion networks: GroupNorm sized to the channels, and SPADE (spatially-adaptive
normalisation), a GroupNorm whose per-pixel scale and shift come from a semantic map."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from diffusion.network_inputs import positive_int


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= max_groups that divides channels."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


class SPADE(nn.Module):
    """GroupNorm(x) * (1 + gamma(seg)) + beta(seg), seg resized (nearest) to x's size.

    The shared conv has no bias, so an all-zero map (the null condition) gives gamma and beta equal to the
    biases of their convs at every pixel: a plain GroupNorm with a learned per-channel affine.
    """

    def __init__(self, channels: int, semantic_channels: int, hidden: int = 128) -> None:
        super().__init__()
        for name, value in [("channels", channels), ("semantic_channels", semantic_channels), ("hidden", hidden)]:
            positive_int(name, value)
        self.semantic_channels = semantic_channels
        self.norm = nn.GroupNorm(norm_groups(channels), channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(semantic_channels, hidden, 3, padding=1, bias=False), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        if seg.dim() != 4 or seg.shape[0] != x.shape[0] or seg.shape[1] != self.semantic_channels:
            raise ValueError(
                f"seg must have shape ({x.shape[0]}, {self.semantic_channels}, H, W), got {tuple(seg.shape)}"
            )
        if seg.shape[2:] != x.shape[2:]:
            seg = F.interpolate(seg, size=tuple(x.shape[2:]), mode="nearest")
        hidden = self.shared(seg.to(self.shared[0].weight.dtype))
        return self.norm(x) * (1 + self.gamma(hidden)) + self.beta(hidden)
