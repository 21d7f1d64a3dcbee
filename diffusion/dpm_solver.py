"""Multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling") for a discrete
GaussianDiffusion, in its data-prediction form: the ODE solver (2M, 3M) and the SDE solver (2M-SDE).

With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and D_i the network's
x0 prediction at t_i, one step from t_i to t_{i+1} (h = lambda_{i+1} - lambda_i) is

    ODE: x_{i+1} = sigma_{i+1} / sigma_i * x_i - alpha_{i+1} (e^{-h} - 1) * D
    SDE: x_{i+1} = sigma_{i+1} / sigma_i * e^{-h} * x_i + alpha_{i+1} (1 - e^{-2h}) * D
                   + sigma_{i+1} sqrt(1 - e^{-2h}) * z

where D is D_i (first order) or corrected with the previous predictions (multistep). The network is evaluated
at `steps` integer timesteps from the start down to 0; the last step jumps from t = 0 to the clean image (sigma
0, where both solvers return D), as DDIM does. The first step is first order, the second at most second order,
and the last is first order (its h is infinite).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from diffusion.gaussian_diffusion import GaussianDiffusion, ModelFn
from diffusion.samplers import StepCallback, check_noise_index, check_start, noise_like, step_bar

SPACINGS = ("logsnr", "time", "karras")
KARRAS_RHO = 7.0


def log_snr(diffusion: GaussianDiffusion) -> np.ndarray:
    """lambda_t = log(alpha_t / sigma_t) of every timestep (decreasing in t)."""
    abar = diffusion.alphas_cumprod.numpy()
    return 0.5 * (np.log(abar) - np.log1p(-abar))


def solver_timesteps(diffusion: GaussianDiffusion, start: int, steps: int, spacing: str = "logsnr") -> list[int]:
    """At most `steps` distinct integer timesteps from `start` down to 0 (both included).

    logsnr: uniform in lambda; time: uniform in t; karras: sigma/alpha = e^{-lambda} spaced with rho = 7 (Karras
    et al. 2022). Non-uniform spacings are mapped to the nearest timesteps, so near t = 0 some may coincide and
    fewer steps are taken.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    count = min(steps, start + 1)
    if count == start + 1:
        return list(range(start, -1, -1))
    if spacing == "time":
        grid = np.linspace(start, 0, count)
    else:
        lam = log_snr(diffusion)[: start + 1]
        if spacing == "logsnr":
            targets = np.linspace(lam[start], lam[0], count)
        else:
            s_max, s_min = math.exp(-lam[start]), math.exp(-lam[0])
            ramp = np.linspace(0.0, 1.0, count)
            sigmas = (s_max ** (1 / KARRAS_RHO) + ramp * (s_min ** (1 / KARRAS_RHO) - s_max ** (1 / KARRAS_RHO))) ** KARRAS_RHO
            targets = -np.log(sigmas)
        # lambda decreases in t: interpolate t as a function of lambda on the increasing reversed grid.
        grid = np.interp(targets, lam[::-1], np.arange(start, -1, -1))
    rounded = [int(t) for t in np.round(grid)]
    rounded[0], rounded[-1] = start, 0
    return list(dict.fromkeys(rounded))


def _multistep_x0(d: list[torch.Tensor], h: list[float], order: int) -> torch.Tensor:
    """The x0 estimate D of a multistep step of `order` from the newest predictions d[-1], d[-2], ... and the
    log-SNR step sizes h[-1] (this step), h[-2], h[-3] (the steps that led to them).

    Order 2 is DPM-Solver++(2M): d0 + (d0 - d1) / (2 r0). Order 3 integrates the quadratic through the last three
    predictions exactly: alpha (1 - e^{-h}) D = alpha [phi1 d0 + (1 - phi1 / h) D1 + (1 - 2 (h - phi1) / h^2) D2]
    with phi1 = 1 - e^{-h}, D1 ~ h x0' and D2 ~ h^2 x0'' / 2 estimated from the divided differences.
    """
    if order == 1:
        return d[-1]
    r0 = h[-2] / h[-1]
    d1_0 = (d[-1] - d[-2]) / r0
    if order == 2:
        return d[-1] + 0.5 * d1_0
    r1 = h[-3] / h[-1]
    d1_1 = (d[-2] - d[-3]) / r1
    first = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    second = (d1_0 - d1_1) / (r0 + r1)
    step = h[-1]
    phi1 = -math.expm1(-step)
    return d[-1] + ((1.0 - phi1 / step) * first + (1.0 - 2.0 * (step - phi1) / step**2) * second) / phi1


@torch.no_grad()
def dpm_solver_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x_T: torch.Tensor,
    steps: int = 15,
    order: int = 2,
    sde: bool = False,
    spacing: str = "logsnr",
    generator: torch.Generator | None = None,
    noise_index: torch.Tensor | None = None,
    t_start: int | None = None,
    clip_x0: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++ of `order` (2 or 3; the SDE variant takes 2) over `steps` timesteps of `diffusion`.

    The SDE variant's per-step noise comes from `generator`, with noise_index as in diffusion.samplers, so a
    transition sequence shares it. `callback(step_index, t, x_t, pred_x0)` sees each evaluated step.
    """
    if order not in (2, 3) or (sde and order != 2):
        raise ValueError(f"order must be 2 or 3 (2 for the SDE variant), got {order!r}")
    start = check_start(diffusion, x_T, t_start)
    check_noise_index(noise_index, x_T.shape[0])
    timesteps = solver_timesteps(diffusion, start, steps, spacing)
    abar = diffusion.alphas_cumprod
    lam = log_snr(diffusion)
    x = x_T
    predictions: list[torch.Tensor] = []
    sizes: list[float] = []
    for step_index, t in enumerate(step_bar(timesteps, progress)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        model_out = diffusion.model_output(model_fn, x, t_batch)
        pred_x0, _ = diffusion.model_predictions(model_out, x, t_batch, clip_x0=clip_x0)
        if callback is not None:
            callback(step_index, t, x, pred_x0)
        predictions = (predictions + [pred_x0])[-3:]
        last = step_index + 1 == len(timesteps)
        if last:
            x = pred_x0
            break
        t_next = timesteps[step_index + 1]
        h = float(lam[t_next] - lam[t])
        sizes = (sizes + [h])[-3:]
        step_order = min(order, len(predictions), step_index + 1)
        if step_index + 2 == len(timesteps):
            step_order = min(step_order, 2)  # the step into t = 0 stays at most second order
        d = _multistep_x0(predictions, sizes, step_order)
        alpha_next, sigma_next = float(abar[t_next]) ** 0.5, float(1.0 - abar[t_next]) ** 0.5
        sigma_now = float(1.0 - abar[t]) ** 0.5
        if sde:
            x = (sigma_next / sigma_now * math.exp(-h)) * x + alpha_next * (-math.expm1(-2.0 * h)) * d
            noise = noise_like(x.shape, generator, x.device, noise_index).to(x.dtype)
            x = x + sigma_next * math.sqrt(-math.expm1(-2.0 * h)) * noise
        else:
            x = (sigma_next / sigma_now) * x - alpha_next * math.expm1(-h) * d
    return x
