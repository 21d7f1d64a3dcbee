"""Convolutional autoencoders for latent diffusion: a VQ-VAE and a KL-regularised autoencoder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion.network_inputs import channel_multipliers, positive_int
from diffusion.quantizer import VectorQuantizer
from diffusion.unet import AttentionBlock, Downsample, Upsample, group_norm

LOGVAR_RANGE = (-30.0, 20.0)
PADDING_MODES = ("zeros", "reflect", "replicate")


def set_padding_mode(module: nn.Module, mode: str) -> None:
    """Extend the borders of every padded convolution in `module` with `mode` (torch's Conv2d padding_mode).

    Zero padding (CompVis' choice) lets a small autoencoder tell border pixels from inner ones, which shows as a
    frame along the tile border in its reconstructions; "reflect" mirrors the image instead.
    """
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {mode!r}")
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d) and any(layer.padding):
            layer.padding_mode = mode


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """Per-sample KL(N(mean, exp(logvar)) || N(0, I)) summed over all non-batch elements: shape (B,)."""
    if mean.shape != logvar.shape or mean.dim() < 1:
        raise ValueError(
            f"mean and logvar must share one shape (B, ...), got {tuple(mean.shape)} and {tuple(logvar.shape)}"
        )
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float())
    return kl.flatten(1).sum(dim=1)


class ResidualBlock(nn.Module):
    """(GroupNorm -> SiLU -> 3x3 conv) twice, plus a skip (1x1 conv when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            group_norm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels), nn.SiLU(), nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.layers(x)


def _middle(channels: int) -> nn.Sequential:
    """Residual block, single-head self-attention, residual block."""
    return nn.Sequential(
        ResidualBlock(channels, channels), AttentionBlock(channels, channels), ResidualBlock(channels, channels)
    )


def _checked_mults(channel_mult: Sequence[int], **sizes: int) -> tuple[int, ...]:
    """The checked channel multipliers, after checking that every size in `sizes` is a positive int."""
    for name, value in sizes.items():
        positive_int(name, value)
    return channel_multipliers("channel_mult", channel_mult)


def _res_blocks(width: int, out_width: int, count: int) -> list[nn.Module]:
    """`count` residual blocks, the first from `width` to `out_width` channels, the others keeping `out_width`."""
    return [ResidualBlock(width if i == 0 else out_width, out_width) for i in range(count)]


class _Stack(nn.Module):
    """What Encoder and Decoder share: the output head GroupNorm -> SiLU -> 3x3 conv."""

    def _add_head(self, width: int, out_channels: int) -> None:
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def _head(self, h: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(h)))


class Encoder(_Stack):
    """Image (B, in_channels, H, W) -> features (B, out_channels, H/f, W/f), f = 2 ** (len(channel_mult) - 1)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        out_channels: int = 4,
    ) -> None:
        super().__init__()
        mults = _checked_mults(channel_mult, in_channels=in_channels, channels=channels,
                               num_res_blocks=num_res_blocks, out_channels=out_channels)
        self.in_channels = in_channels
        self.downsample_factor = 2 ** (len(mults) - 1)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        layers: list[nn.Module] = []
        width = channels
        for level, mult in enumerate(mults):
            layers += _res_blocks(width, channels * mult, num_res_blocks)
            width = channels * mult
            if level < len(mults) - 1:
                layers.append(Downsample(width))
        self.down = nn.Sequential(*layers)
        self.middle = _middle(width)
        self._add_head(width, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.downsample_factor or x.shape[3] % self.downsample_factor:
            raise ValueError(
                f"x height and width must be divisible by the downsampling factor {self.downsample_factor}, "
                f"got {tuple(x.shape[2:])}"
            )
        return self._head(self.middle(self.down(self.conv_in(x))))


class Decoder(_Stack):
    """Latent (B, in_channels, h, w) -> image (B, out_channels, h*f, w*f), mirroring Encoder."""

    def __init__(
        self,
        out_channels: int = 3,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        in_channels: int = 4,
    ) -> None:
        super().__init__()
        mults = _checked_mults(channel_mult, out_channels=out_channels, channels=channels,
                               num_res_blocks=num_res_blocks, in_channels=in_channels)
        self.in_channels = in_channels
        self.upsample_factor = 2 ** (len(mults) - 1)
        width = channels * mults[-1]
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.middle = _middle(width)
        layers: list[nn.Module] = []
        for level in reversed(range(len(mults))):
            layers += _res_blocks(width, channels * mults[level], num_res_blocks + 1)
            width = channels * mults[level]
            if level > 0:
                layers.append(Upsample(width))
        self.up = nn.Sequential(*layers)
        self._add_head(width, out_channels)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"z must have shape (B, {self.in_channels}, h, w), got {tuple(z.shape)}")
        return self._head(self.up(self.middle(self.conv_in(z))))


class _Autoencoder(nn.Module):
    """Shared parts of both autoencoders: config, downsampling factor, latent size, last decoder layer."""

    _config: dict[str, Any]
    encoder: Encoder
    decoder: Decoder

    @property
    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this architecture: type(model)(**model.config)."""
        return copy.deepcopy(self._config)

    @property
    def downsample_factor(self) -> int:
        return self.encoder.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self._config["latent_channels"]

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the decoder's output conv (where the adaptive GAN weight compares gradients)."""
        return self.decoder.conv_out.weight

    def _check_latent(self, z: Tensor) -> None:
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"z must have shape (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")


class VQVAE(_Autoencoder):
    """Encoder -> 1x1 conv -> VectorQuantizer -> 1x1 conv -> Decoder."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        latent_channels: int = 4,
        codebook_size: int = 512,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.99,
        ema_eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
        use_ema: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        positive_int("latent_channels", latent_channels)
        positive_int("codebook_size", codebook_size)
        if ema_eps <= 0:
            raise ValueError(f"ema_eps must be > 0, got {ema_eps}")
        self._config = {
            "in_channels": in_channels, "channels": channels, "channel_mult": channel_multipliers("channel_mult", channel_mult),
            "num_res_blocks": num_res_blocks, "latent_channels": latent_channels, "codebook_size": codebook_size,
            "commitment_weight": float(commitment_weight), "ema_decay": float(ema_decay),
            "ema_eps": float(ema_eps), "dead_code_threshold": float(dead_code_threshold), "use_ema": bool(use_ema),
            "padding_mode": padding_mode,
        }
        self.encoder = Encoder(in_channels, channels, channel_mult, num_res_blocks, latent_channels)
        self.quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.quantizer = VectorQuantizer(
            codebook_size, latent_channels, commitment_weight=commitment_weight, ema_decay=ema_decay,
            eps=ema_eps, dead_code_threshold=dead_code_threshold, use_ema=use_ema,
        )
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(in_channels, channels, channel_mult, num_res_blocks, latent_channels)
        set_padding_mode(self, padding_mode)

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return self.quantizer(self.quant_conv(self.encoder(x)))

    def encode(self, x: Tensor) -> Tensor:
        """The quantised latent (B, latent_channels, H/f, W/f); in training mode this also updates the codebook."""
        return self._quantize(x)[0]

    def decode(self, z: Tensor, quantize: bool = False) -> Tensor:
        """Image from a latent; quantize=True first snaps z to its nearest codes (no codebook update)."""
        self._check_latent(z)
        if quantize:
            z = self.quantizer.quantize(z)[0]
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z_q, vq_loss, info = self._quantize(x)
        recon = self.decode(z_q)
        return recon, {"vq_loss": vq_loss, **info}


class AutoencoderKL(_Autoencoder):
    """Encoder -> (mean, log-variance) of a diagonal Gaussian latent -> Decoder, with a KL penalty to N(0, I)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        latent_channels: int = 4,
        kl_weight: float = 1e-6,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        positive_int("latent_channels", latent_channels)
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self._config = {
            "in_channels": in_channels, "channels": channels, "channel_mult": channel_multipliers("channel_mult", channel_mult),
            "num_res_blocks": num_res_blocks, "latent_channels": latent_channels, "kl_weight": float(kl_weight),
            "padding_mode": padding_mode,
        }
        self.kl_weight = float(kl_weight)
        self.encoder = Encoder(in_channels, channels, channel_mult, num_res_blocks, 2 * latent_channels)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(in_channels, channels, channel_mult, num_res_blocks, latent_channels)
        set_padding_mode(self, padding_mode)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance (clamped to [-30, 20]) of q(z | x), each (B, latent_channels, H/f, W/f)."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    @staticmethod
    def _sample(mean: Tensor, logvar: Tensor) -> Tensor:
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)

    def encode(self, x: Tensor, sample: bool = False) -> Tensor:
        """The posterior mean, or with sample=True a draw mean + std * eps (global RNG)."""
        mean, logvar = self.posterior(x)
        return self._sample(mean, logvar) if sample else mean

    def decode(self, z: Tensor) -> Tensor:
        self._check_latent(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor, sample: bool | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Reconstruction of a posterior draw (sample=None: draw in training mode, use the mean in eval mode)."""
        mean, logvar = self.posterior(x)
        draw = self.training if sample is None else sample
        recon = self.decode(self._sample(mean, logvar) if draw else mean)
        kl = gaussian_kl(mean, logvar).mean()
        return recon, {"kl": kl, "kl_loss": self.kl_weight * kl}
