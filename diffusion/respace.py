"""Respacing: a diffusion process over a subset of another's timesteps, for sampling in fewer steps."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from diffusion.gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, spec: str | int) -> list[int]:
    """The sorted timesteps to keep out of `num_timesteps`.

    `spec` is an int N (N evenly spaced steps from 0 to T-1), "ddimN" (every k-th step from 0, with the
    stride k that gives exactly N steps), or comma-separated counts "10,15,20" (the T steps are cut into
    that many near-equal sections and each section keeps its count of evenly spaced steps).
    """
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if isinstance(spec, bool):
        raise ValueError(f"timestep spacing must be an int or a string, got {spec!r}")
    if isinstance(spec, int):
        return _even_steps(0, num_timesteps, spec, f"timestep spacing {spec}")
    if not isinstance(spec, str):
        raise ValueError(f"timestep spacing must be an int or a string, got {spec!r}")
    text = spec.strip()
    if text.startswith("ddim"):
        return _ddim_steps(num_timesteps, _parse_count(text[len("ddim"):], spec))
    counts = [_parse_count(part, spec) for part in text.split(",")]
    return _section_steps(num_timesteps, counts, spec)


def _parse_count(text: str, spec: str | int) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"bad timestep spacing {spec!r}: expected an int N, 'ddimN' or comma-separated positive counts"
        )
    return int(text)


def _even_steps(start: int, size: int, count: int, what: str) -> list[int]:
    """`count` evenly spaced steps (both ends included) within [start, start + size)."""
    if count < 1 or count > size:
        raise ValueError(f"{what}: cannot take {count} steps out of {size}; expected 1..{size}")
    return [start + int(step) for step in np.round(np.linspace(0, size - 1, count))]


def _ddim_steps(num_timesteps: int, count: int) -> list[int]:
    for stride in range(1, num_timesteps + 1):
        steps = list(range(0, num_timesteps, stride))
        if len(steps) == count:
            return steps
    raise ValueError(f"timestep spacing 'ddim{count}': no integer stride gives {count} of {num_timesteps} steps")


def _section_steps(num_timesteps: int, counts: list[int], spec: str) -> list[int]:
    if len(counts) > num_timesteps:
        raise ValueError(f"timestep spacing {spec!r}: more sections than the {num_timesteps} timesteps")
    base, extra = divmod(num_timesteps, len(counts))
    steps: list[int] = []
    start = 0
    for index, count in enumerate(counts):
        size = base + (1 if index < extra else 0)
        steps.extend(_even_steps(start, size, count, f"timestep spacing {spec!r}, section {index}"))
        start += size
    return steps


def respace(diffusion: GaussianDiffusion, use_timesteps: Iterable[int]) -> GaussianDiffusion:
    """A process over the kept timesteps with the same alpha-bars there; the network still sees original steps.

    It keeps the source's objective, loss_type, learn_sigma and vlb_weight; a learned variance then
    interpolates between the respaced beta and beta-tilde.
    """
    kept = sorted({int(step) for step in use_timesteps})
    if not kept:
        raise ValueError("use_timesteps is empty; expected at least one timestep to keep")
    if kept[0] < 0 or kept[-1] >= diffusion.num_timesteps:
        raise ValueError(f"use_timesteps must lie in [0, {diffusion.num_timesteps}), got {kept[0]}..{kept[-1]}")
    index = torch.tensor(kept, dtype=torch.long)
    alpha_bar = diffusion.alphas_cumprod[index]
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    betas = 1.0 - alpha_bar / previous
    return GaussianDiffusion(
        betas,
        objective=diffusion.objective,
        loss_type=diffusion.loss_type,
        timestep_map=diffusion.timestep_map[index],
        learn_sigma=diffusion.learn_sigma,
        vlb_weight=diffusion.vlb_weight,
    )
