"""Turning a conditional network `model(x, t, cond, drop_cond)` into a sampler's model_fn(x, t).

`drop_cond` is a BoolTensor[B]; True makes that element use the null condition for every condition.
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


def classifier_free_guidance(
    model: ConditionalModel,
    cond: dict[str, torch.Tensor],
    scale: float,
    guided_channels: int | None = None,
) -> ModelFn:
    """model_fn returning uncond + scale * (cond - uncond), both passes run as one batch of 2B.

    scale 1 is the conditional output alone (the unconditional pass is skipped), 0 the unconditional one.
    With `guided_channels` C (a learned-sigma model's prediction channels) only output channels [:C] are
    combined; the remaining (variance) channels are the conditional pass's, unchanged.
    """
    if not math.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
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
        out = model(torch.cat([x, x]), torch.cat([t, t]), doubled_cond, drop)
        conditional, unconditional = out[:batch], out[batch:]
        if guided_channels is None:
            return unconditional + scale * (conditional - unconditional)
        if out.ndim < 2 or out.shape[1] < guided_channels:
            raise ValueError(
                f"guided_channels is {guided_channels} but the model output has shape {tuple(out.shape)}; "
                f"expected at least {guided_channels} channels"
            )
        guided = unconditional[:, :guided_channels] + scale * (
            conditional[:, :guided_channels] - unconditional[:, :guided_channels]
        )
        return torch.cat([guided, conditional[:, guided_channels:]], dim=1)

    return model_fn
