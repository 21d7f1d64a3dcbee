"""The parts every UNet of the toolkit is built from: timestep embedding, res-block, attention, resampling, stage."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffusion.spade import SPADE, group_norm

RESAMPLE_MODES = (None, "down", "up")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of float timesteps (B,)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = rearrange(t.float(), "b -> b 1") * rearrange(freqs, "f -> 1 f")
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def time_mlp(dim: int, emb_dim: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear from the (B, dim) sinusoidal timestep embedding to the (B, emb_dim) embedding."""
    return nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


def zero_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 3x3 output conv with zero weights and bias, so a freshly built network predicts zeros."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, num_head_channels: int) -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(
                f"num_head_channels={num_head_channels} must divide the {channels} channels of every attention layer"
            )
        self.heads = channels // num_head_channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        q, k, v = rearrange(
            self.qkv(self.norm(x)), "b (three heads d) h w -> three b heads (h w) d", three=3, heads=self.heads
        )
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b heads (h w) d -> b (heads d) h w", h=height)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _resample(x: Tensor, mode: str | None) -> Tensor:
    """Parameter-free resampling inside a res-block: 2x2 average pooling down, nearest-neighbour up."""
    if mode == "down":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class ResBlock(nn.Module):
    """norm -> SiLU -> [resample] -> conv, then the time-modulated second norm -> SiLU -> dropout -> conv.

    Both norms are GroupNorm, or SPADE on the semantic map when semantic_channels is given. With
    use_scale_shift_norm the embedding scales and shifts the normalised features (norm(h) * (1 + scale) + shift),
    otherwise it is added before the second norm. With resample "down" or "up" the block also halves or doubles
    the resolution (of the features and of the skip path).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        resample: str | None = None,
        semantic_channels: int | None = None,
        spade_hidden: int = 128,
    ) -> None:
        super().__init__()
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        if resample is not None and in_channels != out_channels:
            raise ValueError("a resampling res-block must keep its channel count")
        self.semantic = semantic_channels is not None
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = self._norm(in_channels, semantic_channels, spade_hidden)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_norm = self._norm(out_channels, semantic_channels, spade_hidden)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    @staticmethod
    def _norm(channels: int, semantic_channels: int | None, spade_hidden: int) -> nn.Module:
        return group_norm(channels) if semantic_channels is None else SPADE(channels, semantic_channels, spade_hidden)

    def _normalise(self, norm: nn.Module, h: Tensor, seg: Tensor | None) -> Tensor:
        return norm(h, seg) if self.semantic else norm(h)

    def forward(self, x: Tensor, emb: Tensor, seg: Tensor | None = None) -> Tensor:
        if self.semantic and seg is None:
            raise ValueError("a SPADE res-block needs the semantic map")
        h = F.silu(self._normalise(self.in_norm, x, seg))
        h = self.in_conv(_resample(h, self.resample))
        x = _resample(x, self.resample)
        emb_out = rearrange(self.emb_proj(emb), "b c -> b c 1 1")
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self._normalise(self.out_norm, h, seg) * (1 + scale) + shift
        else:
            h = self._normalise(self.out_norm, h + emb_out, seg)
        return self.skip(x) + self.out_layers(h)


class Stage(nn.ModuleList):
    """Layers run in order: res-blocks get the embedding and semantic map, the others the features alone.

    With use_checkpoint, res-blocks and attention blocks are recomputed in the backward pass while training.
    """

    def __init__(self, layers: Sequence[nn.Module], use_checkpoint: bool = False) -> None:
        super().__init__(layers)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor, emb: Tensor, seg: Tensor | None = None) -> Tensor:
        recompute = self.use_checkpoint and self.training and torch.is_grad_enabled()
        for layer in self:
            args = (x, emb, seg) if isinstance(layer, ResBlock) else (x,)
            if recompute and isinstance(layer, (ResBlock, AttentionBlock)):
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return x
