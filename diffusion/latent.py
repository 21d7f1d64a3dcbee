"""Latent diffusion: a denoising network that works in the latent space of a frozen autoencoder."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class LatentDiffusion(nn.Module):
    """Wraps a denoising UNet and a frozen autoencoder: encode -> diffuse -> decode.

    Latents are multiplied by `scale_factor` (1 / std of the training latents, measured once) so the diffusion
    sees unit-variance data; `decode` divides it back out. The autoencoder never trains and stays in eval mode.
    """

    def __init__(self, unet: nn.Module, autoencoder: nn.Module, scale_factor: float):
        super().__init__()
        self.unet = unet
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

    @property
    def config(self) -> dict:
        return self.unet.config

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.autoencoder.eval()
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents."""
        return self.autoencoder.encode(images).float() * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (clamped)."""
        return self.autoencoder.decode(latents / self.scale_factor).clamp(-1, 1)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: dict | None = None, drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(z, t, cond, drop_cond)


@torch.no_grad()
def measure_scale_factor(autoencoder: nn.Module, batches: Iterable[torch.Tensor], device: torch.device) -> float:
    """1 / std of the autoencoder's latents over the given image batches (all elements pooled)."""
    total, total_sq, count = 0.0, 0.0, 0
    for images in batches:
        z = autoencoder.encode(images.to(device)).double()
        total += float(z.sum())
        total_sq += float((z * z).sum())
        count += z.numel()
    if count == 0:
        raise ValueError("no batches to measure the latent scale factor from")
    variance = total_sq / count - (total / count) ** 2
    if variance <= 0:
        raise ValueError("the autoencoder's latents are constant; cannot measure a scale factor")
    return float(variance ** -0.5)
