"""Conditional UNet for small pathology patches, rebuildable from its plain-kwargs config."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diffusion.conditioning import ConditionEmbedder
from diffusion.network_inputs import (
    batch_timesteps,
    channel_multipliers,
    check_image_batch,
    dropout_rate,
    level_resolutions,
    positive_int,
)


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= max_groups that divides channels."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels)


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


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, with the embedding as scale-shift on the second norm."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.out_norm = group_norm(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = rearrange(self.emb_proj(emb), "b c -> b c 1 1").chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


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


class EmbedSequential(nn.ModuleList):
    """Layers run in order; residual blocks also receive the time/condition embedding."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """Noise-prediction UNet conditioned on timesteps and on vector conditions (e.g. a mitosis score)."""

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        num_head_channels: int = 32,
        dropout: float = 0.0,
        conditions: Sequence[str] = ("score",),
        cond_drop_prob: float | Mapping[str, float] = 0.1,
        mid_attention: bool = True,
        num_labels: int = 0,
    ) -> None:
        super().__init__()
        dim_mults = channel_multipliers("dim_mults", dim_mults)
        for name, value in [("image_size", image_size), ("in_channels", in_channels), ("out_channels", out_channels),
                            ("dim", dim), ("num_res_blocks", num_res_blocks), ("num_head_channels", num_head_channels)]:
            positive_int(name, value)
        self.downsample_factor, resolutions, attn_resolutions = level_resolutions(
            image_size, dim_mults, attn_resolutions, ("dim_mults", "attn_resolutions")
        )
        dropout = dropout_rate(dropout)
        conditions = [str(name) for name in conditions]
        cond_drop_prob = dict(cond_drop_prob) if isinstance(cond_drop_prob, Mapping) else float(cond_drop_prob)

        self._config: dict[str, Any] = {
            "image_size": image_size, "in_channels": in_channels, "out_channels": out_channels, "dim": dim,
            "dim_mults": list(dim_mults), "num_res_blocks": num_res_blocks,
            "attn_resolutions": list(attn_resolutions), "num_head_channels": num_head_channels,
            "dropout": dropout, "conditions": list(conditions), "cond_drop_prob": cond_drop_prob,
            "mid_attention": bool(mid_attention), "num_labels": int(num_labels),
        }
        self.in_channels = in_channels
        self.dim = dim
        emb_dim = 4 * dim
        self.time_mlp = time_mlp(dim, emb_dim)
        self.cond_embed = ConditionEmbedder(conditions, emb_dim, cond_drop_prob, num_labels) if conditions else None

        self.init_conv = nn.Conv2d(in_channels, dim, 3, padding=1)
        channels = dim
        skip_channels = [channels]
        self.down = nn.ModuleList()
        for level, (mult, resolution) in enumerate(zip(dim_mults, resolutions)):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(channels, dim * mult, emb_dim, dropout)]
                channels = dim * mult
                if resolution in attn_resolutions:
                    layers.append(AttentionBlock(channels, num_head_channels))
                self.down.append(EmbedSequential(layers))
                skip_channels.append(channels)
            if level < len(dim_mults) - 1:
                self.down.append(EmbedSequential([Downsample(channels)]))
                skip_channels.append(channels)

        mid_layers: list[nn.Module] = [ResBlock(channels, channels, emb_dim, dropout)]
        if mid_attention:
            mid_layers.append(AttentionBlock(channels, num_head_channels))
        mid_layers.append(ResBlock(channels, channels, emb_dim, dropout))
        self.mid = EmbedSequential(mid_layers)

        self.up = nn.ModuleList()
        for level in reversed(range(len(dim_mults))):
            mult, resolution = dim_mults[level], resolutions[level]
            for block in range(num_res_blocks + 1):
                layers = [ResBlock(channels + skip_channels.pop(), dim * mult, emb_dim, dropout)]
                channels = dim * mult
                if resolution in attn_resolutions:
                    layers.append(AttentionBlock(channels, num_head_channels))
                if level > 0 and block == num_res_blocks:
                    layers.append(Upsample(channels))
                self.up.append(EmbedSequential(layers))

        self.out_norm = group_norm(channels)
        self.final_conv = zero_conv(channels, out_channels)

    @property
    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture: UNet(**model.config)."""
        return copy.deepcopy(self._config)

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        cond: Mapping[str, Tensor] | None = None,
        drop_cond: Tensor | bool | None = None,
    ) -> Tensor:
        check_image_batch(x, self.in_channels, self.downsample_factor)
        batch = x.shape[0]
        emb = self.time_mlp(timestep_embedding(batch_timesteps(t, batch, x.device), self.dim))
        if self.cond_embed is not None:
            emb = emb + self.cond_embed(cond, batch, drop_cond)

        h = self.init_conv(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.final_conv(F.silu(self.out_norm(h)))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in model (only those requiring grad if trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
