"""The one noise-prediction UNet of the toolkit, rebuildable from its plain-kwargs config.

Conditions enter through adapters. Vector conditions (`score`, `label`: see diffusion.conditioning) are embedded
and added to the time embedding. The spatial condition `semantic` (a B x K x H x W layout) modulates every
middle and decoder res-block through SPADE and, with concat_semantic, is also concatenated to the input; its
null is an all-zero map. Each condition is replaced by its null where drop_cond is True, and at random with its
cond_drop_prob in training (classifier-free guidance).

Configs and weights of the earlier two networks (the score UNet with attn_resolutions, and SDMUNet with
model_channels / channel_mult) still load: upgrade_unet_config translates their kwargs and load_state_dict renames
their parameters.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diffusion.conditioning import CONDITION_EMBEDDINGS, ConditionEmbedder, _resolve_drop_prob
from diffusion.network_inputs import (
    batch_timesteps,
    channel_multipliers,
    check_image_batch,
    condition_drop,
    dropout_rate,
    flag,
    level_resolutions,
    positive_int,
)
from diffusion.spade import group_norm
from diffusion.unet_blocks import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Stage,
    Upsample,
    time_mlp,
    timestep_embedding,
    zero_conv,
)

SPATIAL_CONDITIONS = ("semantic",)


def known_conditions() -> list[str]:
    """Every condition name a UNet can be built with: the vector conditions, then the spatial ones."""
    return sorted([*CONDITION_EMBEDDINGS, *SPATIAL_CONDITIONS])


def _condition_names(conditions: Sequence[str]) -> list[str]:
    if isinstance(conditions, str):
        raise ValueError(f"conditions must be a list of condition names, got the string {conditions!r}")
    names = [str(name) for name in conditions]
    unknown = [name for name in names if name not in CONDITION_EMBEDDINGS and name not in SPATIAL_CONDITIONS]
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; known conditions are {known_conditions()}")
    if len(set(names)) != len(names):
        raise ValueError(f"conditions must not repeat a name, got {names}")
    return names


def to_grid(layout: Tensor, height: int, width: int) -> Tensor:
    """A B x K x fH x fW layout on the network's H x W grid (a latent grid): each f x f block averaged, so a one-hot
    layout becomes its class shares; a size that is not an integer multiple stays as it is (and is rejected)."""
    fh, fw = layout.shape[2] / height, layout.shape[3] / width
    if fh != fw or fh != int(fh) or fh < 1:
        return layout
    return F.avg_pool2d(layout.float(), int(fh)).to(layout.dtype)


class SemanticCondition(nn.Module):
    """The layout the network sees: cond["semantic"] with the dropped rows (forced by drop_cond, or drawn with
    drop_prob in training) replaced by the all-zero null map."""

    def __init__(self, channels: int, drop_prob: float) -> None:
        super().__init__()
        self.channels = channels
        self.drop_prob = drop_prob

    def forward(self, x: Tensor, cond: Mapping[str, Tensor] | None,
                drop_cond: Tensor | bool | Mapping[str, Tensor] | None) -> Tensor:
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]
        forced = condition_drop(drop_cond, "semantic", batch, x.device)
        cond = {} if cond is None else cond
        if "semantic" not in cond:
            if not bool(forced.all()):
                raise ValueError(
                    "condition 'semantic' is missing from cond (pass drop_cond all True for an unconditional pass)"
                )
            return x.new_zeros(batch, self.channels, height, width)
        seg = cond["semantic"]
        expected = (batch, self.channels, height, width)
        if torch.is_tensor(seg) and seg.dim() == 4 and tuple(seg.shape[:2]) == expected[:2] and seg.shape[2:] != x.shape[2:]:
            seg = to_grid(seg, height, width)
        if not torch.is_tensor(seg) or tuple(seg.shape) != expected:
            shape = tuple(seg.shape) if torch.is_tensor(seg) else type(seg).__name__
            raise ValueError(f"cond['semantic'] must have shape {expected} (or an integer multiple of its size), got {shape}")
        drop = forced
        if self.training and self.drop_prob > 0.0:
            drop = drop | (torch.rand(batch, device=x.device) < self.drop_prob)
        seg = seg.to(device=x.device, dtype=x.dtype)
        return torch.where(rearrange(drop, "b -> b 1 1 1"), torch.zeros_like(seg), seg)


class UNet(nn.Module):
    """Noise-prediction UNet conditioned on timesteps and on any mix of vector and semantic-layout conditions.

    Encoder: input conv, then per level num_res_blocks res-blocks (self-attention after each at
    attention_resolutions) and a downsampling step (a strided conv, or a res-block with resblock_updown).
    Middle: res-block, self-attention (mid_attention), res-block. Decoder: the mirror image on the concatenated
    skips, upsampling by nearest neighbours + conv or by a res-block. The middle and decoder res-blocks are
    SPADE-modulated when `semantic` is a condition; the encoder then still sees only the input.
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        num_head_channels: int = 32,
        dropout: float = 0.0,
        conditions: Sequence[str] = ("score",),
        cond_drop_prob: float | Mapping[str, float] = 0.1,
        mid_attention: bool = True,
        num_labels: int = 0,
        semantic_channels: int = 0,
        concat_semantic: bool = False,
        spade_hidden: int = 128,
        resblock_updown: bool = False,
        use_scale_shift_norm: bool = True,
        use_checkpoint: bool = False,
        semantic_spade: bool = True,
        style_encoder: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, value in [("image_size", image_size), ("in_channels", in_channels), ("out_channels", out_channels),
                            ("dim", dim), ("num_res_blocks", num_res_blocks), ("num_head_channels", num_head_channels),
                            ("spade_hidden", spade_hidden)]:
            positive_int(name, value)
        dim_mults = channel_multipliers("dim_mults", dim_mults)
        flags = {name: flag(name, value) for name, value in [
            ("mid_attention", mid_attention), ("concat_semantic", concat_semantic),
            ("resblock_updown", resblock_updown), ("use_scale_shift_norm", use_scale_shift_norm),
            ("use_checkpoint", use_checkpoint), ("semantic_spade", semantic_spade)]}
        dropout = dropout_rate(dropout)
        conditions = _condition_names(conditions)
        semantic = "semantic" in conditions
        if semantic:
            positive_int("semantic_channels", semantic_channels)
        elif semantic_channels != 0:
            raise ValueError(
                f"semantic_channels={semantic_channels!r} needs 'semantic' in conditions, got {conditions}"
            )
        if concat_semantic and not semantic:
            raise ValueError(f"concat_semantic needs 'semantic' in conditions, got {conditions}")
        if semantic and not semantic_spade and not concat_semantic:
            raise ValueError("semantic_spade=False needs concat_semantic=True: the layout must enter somewhere")
        if ("style" in conditions) != (style_encoder is not None):
            raise ValueError("style_encoder (the style encoder's settings) goes with the 'style' condition, and only with it")
        if isinstance(cond_drop_prob, Mapping):
            cond_drop_prob = {str(name): float(p) for name, p in cond_drop_prob.items()}
        else:
            cond_drop_prob = float(cond_drop_prob)
            if not 0.0 <= cond_drop_prob <= 1.0:
                raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
        drop_probs = _resolve_drop_prob(conditions, cond_drop_prob)
        self.downsample_factor, resolutions, attention_resolutions = level_resolutions(
            image_size, dim_mults, attention_resolutions, ("dim_mults", "attention_resolutions")
        )
        attention_mults = [m for m, r in zip(dim_mults, resolutions) if r in attention_resolutions]
        attention_channels = {dim * m for m in attention_mults + ([dim_mults[-1]] if mid_attention else [])}
        undivided = sorted(c for c in attention_channels if c % num_head_channels)
        if undivided:
            raise ValueError(
                f"num_head_channels={num_head_channels} must divide the channels of every attention layer, "
                f"but not {undivided}"
            )

        self._config: dict[str, Any] = {
            "image_size": image_size, "in_channels": in_channels, "out_channels": out_channels, "dim": dim,
            "dim_mults": list(dim_mults), "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attention_resolutions), "num_head_channels": num_head_channels,
            "dropout": dropout, "conditions": list(conditions), "cond_drop_prob": copy.deepcopy(cond_drop_prob),
            "num_labels": int(num_labels), "semantic_channels": int(semantic_channels), "spade_hidden": spade_hidden,
            "style_encoder": copy.deepcopy(dict(style_encoder)) if style_encoder is not None else None,
            **flags,
        }
        self.conditions = tuple(conditions)
        self.in_channels = in_channels
        self.dim = dim
        self.semantic_channels = int(semantic_channels)
        self.concat_semantic = concat_semantic
        emb_dim = 4 * dim
        self.time_mlp = time_mlp(dim, emb_dim)
        vector_conditions = [name for name in conditions if name in CONDITION_EMBEDDINGS]
        self.cond_embed = (
            ConditionEmbedder(vector_conditions, emb_dim, {n: drop_probs[n] for n in vector_conditions}, num_labels,
                              {"style": style_encoder} if style_encoder is not None else None)
            if vector_conditions else None
        )
        self.semantic_cond = SemanticCondition(semantic_channels, drop_probs["semantic"]) if semantic else None

        def block(c_in: int, c_out: int, resample: str | None = None, modulated: bool = False) -> ResBlock:
            spade_channels = semantic_channels if semantic and semantic_spade and modulated else None
            return ResBlock(c_in, c_out, emb_dim, dropout, use_scale_shift_norm, resample, spade_channels, spade_hidden)

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, num_head_channels)

        self.input_conv = nn.Conv2d(in_channels + (semantic_channels if concat_semantic else 0), dim, 3, padding=1)
        channels = dim
        skip_channels = [channels]
        self.input_blocks = nn.ModuleList()
        for level, (mult, resolution) in enumerate(zip(dim_mults, resolutions)):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [block(channels, dim * mult)]
                channels = dim * mult
                if resolution in attention_resolutions:
                    layers.append(attention(channels))
                self.input_blocks.append(Stage(layers, use_checkpoint))
                skip_channels.append(channels)
            if level < len(dim_mults) - 1:
                down = block(channels, channels, resample="down") if resblock_updown else Downsample(channels)
                self.input_blocks.append(Stage([down], use_checkpoint))
                skip_channels.append(channels)

        middle: list[nn.Module] = [block(channels, channels, modulated=True)]
        if mid_attention:
            middle.append(attention(channels))
        middle.append(block(channels, channels, modulated=True))
        self.middle_block = Stage(middle, use_checkpoint)

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(dim_mults))):
            mult, resolution = dim_mults[level], resolutions[level]
            for index in range(num_res_blocks + 1):
                layers = [block(channels + skip_channels.pop(), dim * mult, modulated=True)]
                channels = dim * mult
                if resolution in attention_resolutions:
                    layers.append(attention(channels))
                if level > 0 and index == num_res_blocks:
                    layers.append(
                        block(channels, channels, resample="up", modulated=True) if resblock_updown
                        else Upsample(channels)
                    )
                self.output_blocks.append(Stage(layers, use_checkpoint))

        self.out_norm = group_norm(channels)
        self.final_conv = zero_conv(channels, out_channels)
        self._register_load_state_dict_pre_hook(_rename_legacy_parameters)

    @property
    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture: UNet(**model.config)."""
        return copy.deepcopy(self._config)

    def forward(
        self,
        x: Tensor,
        t: Tensor | float,
        cond: Mapping[str, Tensor] | None = None,
        drop_cond: Tensor | bool | Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        check_image_batch(x, self.in_channels, self.downsample_factor)
        batch = x.shape[0]
        emb = self.time_mlp(timestep_embedding(batch_timesteps(t, batch, x.device), self.dim))
        if self.cond_embed is not None:
            emb = emb + self.cond_embed(cond, batch, drop_cond)
        seg = self.semantic_cond(x, cond, drop_cond) if self.semantic_cond is not None else None

        h = self.input_conv(torch.cat([x, seg], dim=1) if self.concat_semantic else x)
        skips = [h]
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb, seg)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb, seg)
        return self.final_conv(F.silu(self.out_norm(h)))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in model (only those requiring grad if trainable_only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Earlier checkpoints --------------------------------------------------------------------------------------------

# Arguments of the earlier networks under their current names.
_RENAMED_ARGUMENTS = {"attn_resolutions": "attention_resolutions", "model_channels": "dim", "channel_mult": "dim_mults"}

# The earlier SDMUNet's defaults, in the current vocabulary (its configs may leave them out).
_SDM_DEFAULTS: dict[str, Any] = {
    "image_size": 128, "out_channels": 6, "dim_mults": [1, 1, 2, 2, 4], "attention_resolutions": [32, 16, 8],
    "conditions": ["semantic"], "cond_drop_prob": 0.2, "semantic_channels": 3, "resblock_updown": True,
}

# Top-level modules of the earlier score UNet, and the layers of its res-blocks, under their current names.
_RENAMED_MODULES = {"init_conv": "input_conv", "down": "input_blocks", "mid": "middle_block", "up": "output_blocks"}
_RENAMED_RESBLOCK_LAYERS = {".in_layers.0.": ".in_norm.", ".in_layers.2.": ".in_conv."}


def _defaults() -> dict[str, Any]:
    return {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in inspect.signature(UNet.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def upgrade_unet_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The complete UNet kwargs, in the current vocabulary, of a config of this UNet or of an earlier network.

    Accepts the earlier score UNet's kwargs (attn_resolutions), the earlier SDMUNet's (model_channels,
    channel_mult; its defaults fill what is left out) or current ones; arguments left out get their defaults.
    Idempotent: upgrade_unet_config(upgrade_unet_config(c)) == upgrade_unet_config(c).
    """
    config = copy.deepcopy(dict(config))
    sdm = "model_channels" in config or "channel_mult" in config or (
        "semantic_channels" in config and "conditions" not in config
    )
    for old, new in _RENAMED_ARGUMENTS.items():
        if old in config:
            if new in config:
                raise ValueError(f"UNet config gives both {old!r} (its earlier name) and {new!r}")
            config[new] = config.pop(old)
    upgraded = {**_defaults(), **(copy.deepcopy(_SDM_DEFAULTS) if sdm else {}), **config}
    for name in ("dim_mults", "attention_resolutions", "conditions"):
        if isinstance(upgraded[name], tuple):
            upgraded[name] = list(upgraded[name])
    return upgraded


def legacy_parameter_name(name: str) -> str:
    """The current name of a parameter or buffer of the earlier score UNet (other names are returned unchanged)."""
    head, _, rest = name.partition(".")
    if head not in _RENAMED_MODULES or not rest:
        return name
    rest = f".{rest}"
    for old, new in _RENAMED_RESBLOCK_LAYERS.items():
        rest = rest.replace(old, new)
    return _RENAMED_MODULES[head] + rest


def upgrade_state_dict(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """A copy of a UNet state dict (keys below `prefix`) with the earlier score UNet's names renamed, order kept."""
    return {
        prefix + legacy_parameter_name(key[len(prefix):]) if key.startswith(prefix) else key: value
        for key, value in state.items()
    }


def _rename_legacy_parameters(state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: rename the earlier score UNet's parameters in place (model, EMA, fine-tuning)."""
    renamed = {key: prefix + legacy_parameter_name(key[len(prefix):]) for key in state_dict if key.startswith(prefix)}
    for old, new in renamed.items():
        if new != old and new not in state_dict:
            state_dict[new] = state_dict.pop(old)
