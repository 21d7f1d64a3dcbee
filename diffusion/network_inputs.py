"""Checks of the diffusion networks' constructor arguments and forward inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


def positive_int(name: str, value: Any) -> int:
    """`value` if it is an int >= 1 (bools are not); ValueError naming `name` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def channel_multipliers(name: str, values: Sequence[Any]) -> list[int]:
    """The per-level channel multipliers as a list: at least one, each a positive int."""
    multipliers = [positive_int(f"{name} entries", value) for value in values]
    if not multipliers:
        raise ValueError(f"{name} must list at least one channel multiplier")
    return multipliers


def flag(name: str, value: Any) -> bool:
    """`value` if it is a bool; ValueError naming `name` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def dropout_rate(dropout: Any) -> float:
    """`dropout` as a float in [0, 1)."""
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    return float(dropout)


def level_resolutions(
    image_size: int, multipliers: Sequence[int], attention: Sequence[int], names: tuple[str, str]
) -> tuple[int, list[int], list[int]]:
    """(downsample factor, feature-map size of every level, attention resolutions as ints) of a UNet.

    `names` are the argument names of the multipliers and the attention resolutions, for the messages:
    `image_size` must be divisible by the downsample factor and every attention resolution must occur.
    """
    multipliers_name, attention_name = names
    factor = 2 ** (len(multipliers) - 1)
    if image_size % factor:
        raise ValueError(f"image_size={image_size} must be divisible by 2**(len({multipliers_name})-1) = {factor}")
    resolutions = [image_size // 2**level for level in range(len(multipliers))]
    attention = [int(r) for r in attention]
    never = sorted(set(attention) - set(resolutions))
    if never:
        raise ValueError(f"{attention_name} {never} never occur; feature-map sizes of this UNet are {resolutions}")
    return factor, resolutions, attention


def check_image_batch(x: Tensor, in_channels: int, downsample_factor: int) -> None:
    """ValueError unless x is (B, in_channels, H, W) with H and W divisible by `downsample_factor`."""
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"x must have shape (B, {in_channels}, H, W), got {tuple(x.shape)}")
    if x.shape[2] % downsample_factor or x.shape[3] % downsample_factor:
        raise ValueError(f"x height and width must be divisible by {downsample_factor}, got {tuple(x.shape[2:])}")


def batch_timesteps(t: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """Timesteps as a float tensor (B,); a scalar is shared by the whole batch."""
    t = torch.as_tensor(t, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if tuple(t.shape) != (batch,):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t.float()


def forced_drop(drop_cond: Tensor | bool | None, batch: int, device: torch.device) -> Tensor:
    """Rows whose conditions are all replaced by their nulls, as a bool tensor (B,): none for None, all or
    none for a bool, else the given bool tensor of shape (B,)."""
    if drop_cond is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    if isinstance(drop_cond, bool):
        return torch.full((batch,), drop_cond, dtype=torch.bool, device=device)
    if drop_cond.dtype != torch.bool or tuple(drop_cond.shape) != (batch,):
        raise ValueError(
            f"drop_cond must be a bool tensor of shape ({batch},), got {drop_cond.dtype} {tuple(drop_cond.shape)}"
        )
    return drop_cond.to(device)


def condition_drop(drop_cond: Tensor | bool | Mapping[str, Tensor | bool] | None, name: str, batch: int,
                   device: torch.device) -> Tensor:
    """Rows whose condition `name` is replaced by its null: drop_cond for every condition at once, or a mapping
    from condition names to their own drop_cond (a name left out is not dropped)."""
    if isinstance(drop_cond, Mapping):
        return forced_drop(drop_cond.get(name), batch, device)
    return forced_drop(drop_cond, batch, device)
