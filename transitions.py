"""Mitosis transition sequences: one nucleus (shared x_T and per-step noise) rendered at a sweep of conditions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.guidance import classifier_free_guidance
from diffusion.respace import respace, space_timesteps
from diffusion.samplers import ddim_sample, ddpm_sample, sdedit_start

SAMPLERS = ("ddpm", "ddim")


def parse_conditions(text: str) -> list[float]:
    """'0,0.5,1' or 'start:stop:count' (count values from start to stop inclusive) -> list of floats."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            n = int(count)
            if n < 1:
                raise ValueError("count must be at least 1")
            values = np.linspace(float(start), float(stop), n).tolist()
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--conditions: expected '0,0.5,1' or 'start:stop:count', got {text!r} ({err})") from None
    if not values:
        raise ValueError("--conditions: no values given")
    return [round(v, 6) for v in values]


@dataclass
class SamplingOptions:
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    cfg_scale: float = 1.0
    strength: float = 1.0


def sample_batch(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    scores: torch.Tensor,
    noise_index: torch.Tensor,
    generator: torch.Generator,
    options: SamplingOptions,
    start_images: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample one batch; with start_images, x_T is the noise added to them (SDEdit at options.strength)."""
    cond = {"score": scores} if "score" in model.config.get("conditions", ()) else {}
    model_fn = classifier_free_guidance(model, cond, options.cfg_scale)
    process = diffusion
    if options.sampler == "ddpm" and options.steps < diffusion.num_timesteps:
        process = respace(diffusion, space_timesteps(diffusion.num_timesteps, options.steps))
    x, t_start = x_T, None
    if start_images is not None:
        x, t_start = sdedit_start(process, start_images, options.strength, x_T)
    if options.sampler == "ddpm":
        return ddpm_sample(process, model_fn, x, generator=generator, noise_index=noise_index, t_start=t_start)
    return ddim_sample(
        process, model_fn, x, steps=options.steps, eta=options.eta, generator=generator, noise_index=noise_index, t_start=t_start
    )


@torch.no_grad()
def render_sequences(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    conditions: list[float],
    num_sequences: int,
    image_size: int,
    seed: int,
    options: SamplingOptions,
    device: torch.device,
    sequences_per_batch: int = 8,
    start_images: torch.Tensor | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """(S, K, 3, H, W) images in [-1, 1]; within sequence s every condition shares x_T and the per-step noise.

    x_T of every sequence comes from one generator seeded with `seed`; each batch of sequences draws its
    per-step noise from a generator seeded with (seed, first sequence of the batch), so the same seed and
    sequences_per_batch reproduce the images exactly. start_images (S, 3, H, W) switches to SDEdit.
    """
    k = len(conditions)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x_T_all = torch.randn((num_sequences, 3, image_size, image_size), generator=gen)
    values = torch.tensor(conditions, dtype=torch.float32)
    out = []
    chunks = range(0, num_sequences, sequences_per_batch)
    for first in tqdm(chunks, desc="sequences", disable=not progress):
        count = min(sequences_per_batch, num_sequences - first)
        noise_index = torch.arange(count).repeat_interleave(k).to(device)
        x_T = x_T_all[first : first + count].repeat_interleave(k, dim=0).to(device)
        scores = values.repeat(count).to(device)
        step_gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + first)
        starts = None
        if start_images is not None:
            starts = start_images[first : first + count].repeat_interleave(k, dim=0).to(device)
        images = sample_batch(model, diffusion, x_T, scores, noise_index, step_gen, options, starts)
        out.append(images.float().clamp(-1, 1).cpu().view(count, k, *images.shape[1:]))
    return torch.cat(out)


@torch.no_grad()
def score_images(ensemble: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """(M, N) member probabilities for N images in [-1, 1]."""
    parts = [ensemble.member_probs(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(parts, dim=1)


def spearman(conditions: np.ndarray, scores: np.ndarray) -> float:
    """Spearman correlation of the target condition and the ensemble score (nan when either is constant)."""
    if np.ptp(conditions) == 0 or np.ptp(scores) == 0:
        return float("nan")
    return float(spearmanr(conditions, scores).statistic)
