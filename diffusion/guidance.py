"""Turning a conditional network `model(x, t, cond, drop_cond)` into a sampler's model_fn(x, t).

`drop_cond` is a BoolTensor[B]; True makes that element use the null condition for every condition. Guidance on
some conditions only (`guided_conditions`, e.g. the style but not the layout) passes a mapping from those names to
their BoolTensor[B] instead, so the other conditions stay in both passes.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from diffusion.gaussian_diffusion import ModelFn

ConditionalModel = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def _check_cond(cond: dict[str, torch.Tensor], batch: int) -> None:
    for name, value in cond.items():
        if not torch.is_tensor(value) or value.ndim < 1 or value.shape[0] != batch:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise ValueError(f"condition {name!r} must be a tensor with batch size {batch}, got {shape}")


def conditional_model_fn(model: ConditionalModel, cond: dict[str, torch.Tensor]) -> ModelFn:
    """model_fn that always uses the given conditions."""

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_cond(cond, x.shape[0])
        keep = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return model(x, t, cond, keep)

    return model_fn


def rescale_guidance(guided: torch.Tensor, conditional: torch.Tensor, rescale: float) -> torch.Tensor:
    """CFG-rescale (Lin et al., 2024): the guided prediction scaled to the per-sample standard deviation of the
    conditional one, mixed with the plain guided prediction by `rescale` (0: plain guidance)."""
    if rescale == 0.0:
        return guided
    dims = tuple(range(1, guided.ndim))
    matched = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12))
    return rescale * matched + (1.0 - rescale) * guided


def classifier_free_guidance(
    model: ConditionalModel,
    cond: dict[str, torch.Tensor],
    scale: float,
    guided_channels: int | None = None,
    guided_conditions: tuple[str, ...] | None = None,
    rescale: float = 0.0,
) -> ModelFn:
    """model_fn returning uncond + scale * (cond - uncond), both passes run as one batch of 2B.

    scale 1 is the conditional output alone (the unconditional pass is skipped), 0 the unconditional one.
    With `guided_channels` C (a learned-sigma model's prediction channels) only output channels [:C] are
    combined; the remaining (variance) channels are the conditional pass's, unchanged. `guided_conditions`
    names the conditions the unconditional pass drops (default: all of them); `rescale` in [0, 1] applies
    CFG-rescale to the guided channels.
    """
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale must lie in [0, 1], got {rescale!r}")
    if guided_channels is not None and (
        isinstance(guided_channels, bool) or not isinstance(guided_channels, int) or guided_channels < 1
    ):
        raise ValueError(f"guided_channels must be a positive integer or None, got {guided_channels!r}")
    if scale == 1.0:
        return conditional_model_fn(model, cond)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        _check_cond(cond, batch)
        doubled_cond = {name: torch.cat([value, value]) for name, value in cond.items()}
        drop = torch.cat(
            [
                torch.zeros(batch, dtype=torch.bool, device=x.device),
                torch.ones(batch, dtype=torch.bool, device=x.device),
            ]
        )
        if guided_conditions is not None:
            drop = {name: drop for name in guided_conditions}
        out = model(torch.cat([x, x]), torch.cat([t, t]), doubled_cond, drop)
        conditional, unconditional = out[:batch], out[batch:]
        if guided_channels is None:
            return rescale_guidance(unconditional + scale * (conditional - unconditional), conditional, rescale)
        if out.ndim < 2 or out.shape[1] < guided_channels:
            raise ValueError(
                f"guided_channels is {guided_channels} but the model output has shape {tuple(out.shape)}; "
                f"expected at least {guided_channels} channels"
            )
        guided = unconditional[:, :guided_channels] + scale * (
            conditional[:, :guided_channels] - unconditional[:, :guided_channels]
        )
        guided = rescale_guidance(guided, conditional[:, :guided_channels], rescale)
        return torch.cat([guided, conditional[:, guided_channels:]], dim=1)

    return model_fn
