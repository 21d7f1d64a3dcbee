"""Noise schedules: the per-step betas of a discrete diffusion process."""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine", "sigmoid", "scaled_linear")
# Latent diffusion's (CompVis) "linear" schedule: linear in sqrt(beta) between these betas.
LDM_BETA_RANGE = (0.0015, 0.0205)

MAX_BETA = 0.999


def make_betas(schedule: str, timesteps: int, beta_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Return the float64 betas of `schedule` for `timesteps` steps (`beta_range`: first and last beta of
    scaled_linear, default LDM_BETA_RANGE)."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
    if schedule == "linear":
        return linear_betas(timesteps)
    if schedule == "cosine":
        return cosine_betas(timesteps)
    if schedule == "sigmoid":
        return sigmoid_betas(timesteps)
    if schedule == "scaled_linear":
        return scaled_linear_betas(timesteps, *(beta_range or LDM_BETA_RANGE))
    raise ValueError(f"unknown noise schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")


def linear_betas(timesteps: int) -> torch.Tensor:
    """DDPM's linear betas from 1e-4 to 0.02, rescaled so any step count has the same end point."""
    scale = 1000.0 / timesteps
    if scale * 0.02 >= 1.0:
        raise ValueError(f"the linear schedule needs timesteps > 20 (its last beta is 20 / timesteps), got {timesteps}")
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def scaled_linear_betas(timesteps: int, start: float, end: float) -> torch.Tensor:
    """Betas whose square roots run linearly from sqrt(start) to sqrt(end) (latent diffusion's "linear")."""
    if not 0.0 < start <= end < 1.0:
        raise ValueError(f"scaled_linear needs 0 < first beta <= last beta < 1, got {start}, {end}")
    return torch.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=torch.float64) ** 2


def cosine_betas(timesteps: int, offset: float = 0.008) -> torch.Tensor:
    """Betas whose alpha-bar follows cos^2 of the normalised time (Nichol & Dhariwal 2021)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return betas_from_alpha_bar(alpha_bar)


def sigmoid_betas(
    timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> torch.Tensor:
    """Betas whose alpha-bar falls from 1 to 0 along a sigmoid over [start, end] with temperature tau."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    low = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    high = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alpha_bar = (high - torch.sigmoid((steps * (end - start) + start) / tau)) / (high - low)
    return betas_from_alpha_bar(alpha_bar)


def betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Betas of the T steps between T+1 alpha-bar values (alpha_bar[0] is time 0), clipped at MAX_BETA."""
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(min=0.0, max=MAX_BETA)
