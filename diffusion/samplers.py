"""Samplers for a GaussianDiffusion: DDPM ancestral sampling, DDIM, and the SDEdit starting point.

Every sampler starts from an explicit x_T and draws its per-step noise from an optional torch.Generator.
`noise_index[b]` picks which row of each step's (G, ...) noise tensor batch element b uses, so elements
rendering the same sequence under different conditions share their noise exactly.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from diffusion.gaussian_diffusion import GaussianDiffusion, ModelFn, standard_normal

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def noise_like(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    device: torch.device | str,
    noise_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """N(0, 1) noise of `shape` where batch element b gets row noise_index[b] of a (G, ...) draw."""
    if noise_index is None:
        return standard_normal(shape, device, generator)
    rows = noise_index.max().item() + 1
    noise = standard_normal((rows, *shape[1:]), device, generator)
    return noise[noise_index.to(noise.device)]


def check_noise_index(noise_index: torch.Tensor | None, batch: int) -> None:
    if noise_index is None:
        return
    if noise_index.shape != (batch,) or noise_index.dtype != torch.long:
        raise ValueError(
            f"noise_index must be a LongTensor of shape ({batch},), "
            f"got {noise_index.dtype} of shape {tuple(noise_index.shape)}"
        )
    if noise_index.min().item() < 0:
        raise ValueError("noise_index must be non-negative")


def check_start(diffusion: GaussianDiffusion, x_T: torch.Tensor, t_start: int | None) -> int:
    """The first timestep of the reverse loop, after validating x_T and t_start."""
    if not torch.is_tensor(x_T) or x_T.ndim < 1 or not x_T.is_floating_point():
        raise ValueError("x_T must be a floating-point tensor with a batch dimension")
    if t_start is None:
        return diffusion.num_timesteps - 1
    if isinstance(t_start, bool) or not isinstance(t_start, int) or not 0 <= t_start < diffusion.num_timesteps:
        raise ValueError(f"t_start must be an int in [0, {diffusion.num_timesteps}), got {t_start!r}")
    return t_start


def step_bar(timesteps: list[int], progress: bool) -> Iterable[int]:
    """The timesteps, with a progress bar (steps done, rate and time left) when `progress`."""
    return tqdm(timesteps, desc="sampling steps", unit="step", disable=not progress, leave=False, dynamic_ncols=True)


@torch.no_grad()
def ddpm_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x_T: torch.Tensor,
    generator: torch.Generator | None = None,
    noise_index: torch.Tensor | None = None,
    t_start: int | None = None,
    clip_x0: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling over every timestep of `diffusion` from t_start (default T-1) down to 0.

    `callback(step_index, t, x_t, pred_x0)` sees each step's input x_t and the x0 predicted from it.
    """
    start = check_start(diffusion, x_T, t_start)
    check_noise_index(noise_index, x_T.shape[0])
    x = x_T
    for step_index, t in enumerate(step_bar(list(range(start, -1, -1)), progress)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        out = diffusion.p_mean_variance(model_fn, x, t_batch, clip_x0=clip_x0)
        if callback is not None:
            callback(step_index, t, x, out["pred_x0"])
        if t > 0:
            noise = noise_like(x.shape, generator, x.device, noise_index).to(x.dtype)
            x = out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise
        else:
            x = out["mean"]
    return x


def ddim_timesteps(start: int, steps: int) -> list[int]:
    """At most `steps` evenly strided timesteps from `start` down to 0 (both included)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    count = min(steps, start + 1)
    return [int(t) for t in np.round(np.linspace(start, 0, count))]


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x_T: torch.Tensor,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise_index: torch.Tensor | None = None,
    t_start: int | None = None,
    clip_x0: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM over `steps` evenly strided timesteps of `diffusion`; eta=0 is deterministic, eta=1 DDPM-like.

    `callback(step_index, t, x_t, pred_x0)` sees each step's input x_t and the x0 predicted from it.
    """
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    start = check_start(diffusion, x_T, t_start)
    check_noise_index(noise_index, x_T.shape[0])
    timesteps = ddim_timesteps(start, steps)
    alpha_bar = diffusion.alphas_cumprod
    x = x_T
    for step_index, t in enumerate(step_bar(timesteps, progress)):
        t_prev = timesteps[step_index + 1] if step_index + 1 < len(timesteps) else -1
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        model_out = diffusion.model_output(model_fn, x, t_batch)
        pred_x0, pred_eps = diffusion.model_predictions(model_out, x, t_batch, clip_x0=clip_x0)
        if callback is not None:
            callback(step_index, t, x, pred_x0)
        ab = float(alpha_bar[t])
        ab_prev = float(alpha_bar[t_prev]) if t_prev >= 0 else 1.0
        sigma = eta * ((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)) ** 0.5
        x = ab_prev**0.5 * pred_x0 + max(1.0 - ab_prev - sigma**2, 0.0) ** 0.5 * pred_eps
        if sigma > 0.0:
            x = x + sigma * noise_like(x.shape, generator, x.device, noise_index).to(x.dtype)
    return x


def sdedit_start(
    diffusion: GaussianDiffusion, x0: torch.Tensor, strength: float, noise: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """(x_t, t_start): a real image noised to t_start = round(strength * (T-1)), the SDEdit starting point."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    t_start = round(strength * (diffusion.num_timesteps - 1))
    t_batch = torch.full((x0.shape[0],), t_start, dtype=torch.long, device=x0.device)
    return diffusion.q_sample(x0, t_batch, noise), t_start
