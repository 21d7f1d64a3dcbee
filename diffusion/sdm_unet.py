"""Semantic diffusion UNet (SDM): the encoder sees only the noisy image, the middle and decoder are SPADE-modulated.

The semantic layout (cond["semantic"], B x K x H x W) reaches every middle and decoder res-block through SPADE;
its null is an all-zero map, used for classifier-free-guidance dropout and for the unconditional pass.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffusion.network_inputs import (
    batch_timesteps,
    channel_multipliers,
    check_image_batch,
    dropout_rate,
    flag,
    forced_drop,
    level_resolutions,
    positive_int,
)
from diffusion.spade import SPADE
from diffusion.unet import (
    AttentionBlock,
    Downsample,
    Upsample,
    group_norm,
    time_mlp,
    timestep_embedding,
    zero_conv,
)

RESAMPLE_MODES = (None, "down", "up")


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
    otherwise it is added before the second norm.
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
        self.in_norm = SPADE(in_channels, semantic_channels, spade_hidden) if self.semantic else group_norm(in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_norm = SPADE(out_channels, semantic_channels, spade_hidden) if self.semantic else group_norm(out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

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


class SDMUNet(nn.Module):
    """Noise-prediction UNet whose decoder follows a semantic layout through SPADE (semantic diffusion)."""

    def __init__(
        self,
        image_size: int = 128,
        in_channels: int = 3,
        out_channels: int = 6,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (32, 16, 8),
        num_head_channels: int = 32,
        dropout: float = 0.0,
        semantic_channels: int = 3,
        spade_hidden: int = 128,
        resblock_updown: bool = True,
        use_scale_shift_norm: bool = True,
        use_checkpoint: bool = False,
        cond_drop_prob: float = 0.2,
        concat_semantic: bool = False,
        conditions: Sequence[str] = ("semantic",),
    ) -> None:
        super().__init__()
        for name, value in [("image_size", image_size), ("in_channels", in_channels), ("out_channels", out_channels),
                            ("model_channels", model_channels), ("num_res_blocks", num_res_blocks),
                            ("num_head_channels", num_head_channels), ("semantic_channels", semantic_channels),
                            ("spade_hidden", spade_hidden)]:
            positive_int(name, value)
        channel_mult = channel_multipliers("channel_mult", channel_mult)
        flags = {name: flag(name, value) for name, value in [
            ("resblock_updown", resblock_updown), ("use_scale_shift_norm", use_scale_shift_norm),
            ("use_checkpoint", use_checkpoint), ("concat_semantic", concat_semantic)]}
        if isinstance(conditions, str) or list(conditions) != ["semantic"]:
            raise ValueError(f"conditions must be ['semantic'] (the only condition of this model), got {conditions!r}")
        dropout = dropout_rate(dropout)
        if not 0.0 <= float(cond_drop_prob) <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
        self.downsample_factor, resolutions, attention_resolutions = level_resolutions(
            image_size, channel_mult, attention_resolutions, ("channel_mult", "attention_resolutions")
        )
        attention_mults = [m for m, r in zip(channel_mult, resolutions) if r in attention_resolutions]
        attention_channels = {model_channels * m for m in [*attention_mults, channel_mult[-1]]}
        undivided = sorted(c for c in attention_channels if c % num_head_channels)
        if undivided:
            raise ValueError(
                f"num_head_channels={num_head_channels} must divide the channels of every attention layer, "
                f"but not {undivided}"
            )

        self._config: dict[str, Any] = {
            "image_size": image_size, "in_channels": in_channels, "out_channels": out_channels,
            "model_channels": model_channels, "channel_mult": list(channel_mult), "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attention_resolutions), "num_head_channels": num_head_channels,
            "dropout": dropout, "semantic_channels": semantic_channels, "spade_hidden": spade_hidden, **flags,
            "cond_drop_prob": float(cond_drop_prob), "conditions": ["semantic"],
        }
        self.conditions = ("semantic",)
        self.in_channels = in_channels
        self.semantic_channels = semantic_channels
        self.model_channels = model_channels
        self.cond_drop_prob = float(cond_drop_prob)
        self.concat_semantic = concat_semantic
        emb_dim = 4 * model_channels
        self.time_mlp = time_mlp(model_channels, emb_dim)

        def block(c_in: int, c_out: int, resample: str | None = None, semantic: bool = False) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, dropout, use_scale_shift_norm, resample,
                            semantic_channels if semantic else None, spade_hidden)

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, num_head_channels)

        input_conv_channels = in_channels + (semantic_channels if concat_semantic else 0)
        self.input_conv = nn.Conv2d(input_conv_channels, model_channels, 3, padding=1)
        channels = model_channels
        skip_channels = [channels]
        self.input_blocks = nn.ModuleList()
        for level, (mult, resolution) in enumerate(zip(channel_mult, resolutions)):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [block(channels, model_channels * mult)]
                channels = model_channels * mult
                if resolution in attention_resolutions:
                    layers.append(attention(channels))
                self.input_blocks.append(Stage(layers, use_checkpoint))
                skip_channels.append(channels)
            if level < len(channel_mult) - 1:
                down = block(channels, channels, resample="down") if resblock_updown else Downsample(channels)
                self.input_blocks.append(Stage([down], use_checkpoint))
                skip_channels.append(channels)

        self.middle_block = Stage(
            [block(channels, channels, semantic=True), attention(channels), block(channels, channels, semantic=True)],
            use_checkpoint,
        )

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            mult, resolution = channel_mult[level], resolutions[level]
            for index in range(num_res_blocks + 1):
                layers = [block(channels + skip_channels.pop(), model_channels * mult, semantic=True)]
                channels = model_channels * mult
                if resolution in attention_resolutions:
                    layers.append(attention(channels))
                if level > 0 and index == num_res_blocks:
                    layers.append(
                        block(channels, channels, resample="up", semantic=True) if resblock_updown
                        else Upsample(channels)
                    )
                self.output_blocks.append(Stage(layers, use_checkpoint))

        self.out_norm = group_norm(channels)
        self.final_conv = zero_conv(channels, out_channels)

    @property
    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture: SDMUNet(**model.config)."""
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
        emb = self.time_mlp(timestep_embedding(batch_timesteps(t, batch, x.device), self.model_channels))
        seg = self.semantic_map(x, cond, drop_cond)

        h = self.input_conv(torch.cat([x, seg], dim=1) if self.concat_semantic else x)
        skips = [h]
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb, seg)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, seg)
        return self.final_conv(F.silu(self.out_norm(h)))

    def semantic_map(
        self, x: Tensor, cond: Mapping[str, Tensor] | None, drop_cond: Tensor | bool | None = None
    ) -> Tensor:
        """cond["semantic"] with the dropped rows (forced, or drawn with cond_drop_prob in training) set to zero."""
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]
        forced = forced_drop(drop_cond, batch, x.device)
        cond = {} if cond is None else cond
        if "semantic" not in cond:
            if not bool(forced.all()):
                raise ValueError(
                    "condition 'semantic' is missing from cond (pass drop_cond all True for an unconditional pass)"
                )
            return x.new_zeros(batch, self.semantic_channels, height, width)
        seg = cond["semantic"]
        expected = (batch, self.semantic_channels, height, width)
        if not torch.is_tensor(seg) or tuple(seg.shape) != expected:
            shape = tuple(seg.shape) if torch.is_tensor(seg) else type(seg).__name__
            raise ValueError(f"cond['semantic'] must have shape {expected}, got {shape}")
        drop = forced
        if self.training and self.cond_drop_prob > 0.0:
            drop = drop | (torch.rand(batch, device=x.device) < self.cond_drop_prob)
        seg = seg.to(device=x.device, dtype=x.dtype)
        return torch.where(rearrange(drop, "b -> b 1 1 1"), torch.zeros_like(seg), seg)
