"""What the trainer optimises and validates for each kind of model: the loss of a batch and the validation metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from diffusion.discriminator import adaptive_weight, generator_adv_loss, hinge_d_loss
from diffusion.gaussian_diffusion import GaussianDiffusion
from metrics.structural import ssim
from common.figures import labelled_grid
from common.files import save_image_atomic

VALIDATION_SEED = 1234


def limited(loader: Iterable, max_batches: int) -> Iterable:
    """The first max_batches batches of a loader (all when max_batches is 0)."""
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        yield batch


class Task:
    """What the trainer optimises and validates; the optional hooks have do-nothing defaults.

    `discriminator`: an extra network trained adversarially (with `discriminator_active` and
    `discriminator_loss`); `log_fields` / `last_logs`: extra columns of the training log;
    `write_pictures`: a picture of the validation batch at each validation.
    """

    monitor = "loss"
    higher_is_better = False
    log_fields: tuple[str, ...] = ()
    discriminator: nn.Module | None = None

    def __init__(self) -> None:
        self.step = 0
        self.last_logs: dict[str, float] = {}

    def training_loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, model: nn.Module, loader: Iterable, device: torch.device, max_batches: int = 0) -> dict[str, float]:
        raise NotImplementedError

    def set_step(self, step: int) -> None:
        """Called before each optimiser step with the number of steps done."""
        self.step = step

    def discriminator_active(self) -> bool:
        return False

    def discriminator_loss(self, discriminator: nn.Module, device: torch.device) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} trains no discriminator")

    def write_pictures(self, model: nn.Module, loader: Iterable, device: torch.device, path: Path) -> None:
        """Nothing by default."""


class DiffusionTask(Task):
    """Denoising loss of GaussianDiffusion; validation uses a fixed generator so runs are comparable.

    With `encode`, images are first mapped to latents by the model's frozen autoencoder (latent diffusion);
    without it, batch["image"] is what is diffused (pixels, or latents cached beforehand).
    """

    def __init__(self, diffusion: GaussianDiffusion, conditions: Iterable[str], encode: bool = False):
        super().__init__()
        self.diffusion = diffusion
        self.conditions = tuple(conditions)
        self.encode = encode

    def _inputs(self, model: nn.Module, batch: dict[str, Any], device: torch.device):
        x0 = batch["image"].to(device, non_blocking=True)
        if self.encode:
            x0 = getattr(model, "module", model).encode(x0)
        cond = {name: batch[name].to(device, non_blocking=True) for name in self.conditions} if self.conditions else None
        return x0, cond

    def training_loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x0, cond = self._inputs(model, batch, device)
        return self.diffusion.training_losses(lambda x, t: model(x, t, cond), x0).mean()

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device, max_batches: int = 0) -> dict[str, float]:
        generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
        total, count = 0.0, 0
        for batch in limited(loader, max_batches):
            x0, cond = self._inputs(model, batch, device)
            t = self.diffusion.sample_timesteps(x0.shape[0], device, generator)
            noise = torch.randn(x0.shape, generator=generator, device=device)
            losses = self.diffusion.training_losses(lambda x, tt: model(x, tt, cond), x0, t=t, noise=noise)
            total += float(losses.sum())
            count += x0.shape[0]
        return {"loss": total / max(count, 1)}


class ClassifierTask(Task):
    """Binary cross-entropy on the mitosis logit; targets may be soft (share of mitotic votes)."""

    def training_loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x = batch["image"].to(device, non_blocking=True)
        target = batch["score"].to(device, non_blocking=True).float()
        return F.binary_cross_entropy_with_logits(model(x).float(), target)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device, max_batches: int = 0) -> dict[str, float]:
        losses, probs, labels = [], [], []
        for batch in limited(loader, max_batches):
            logits = model(batch["image"].to(device)).float()
            target = batch["score"].to(device).float()
            losses.append(F.binary_cross_entropy_with_logits(logits, target, reduction="none").cpu())
            probs.append(torch.sigmoid(logits).cpu())
            labels.append(torch.as_tensor(batch["label"]).cpu())
        if not losses:
            return {"loss": float("nan")}
        prob = torch.cat(probs).numpy()
        label = torch.cat(labels).numpy()
        metrics = {"loss": float(torch.cat(losses).mean()), "accuracy": float(np.mean((prob > 0.5) == (label == 1)))}
        if len(np.unique(label)) == 2:
            metrics["auc"] = float(roc_auc_score(label, prob))
        return metrics


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (per image)."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10.0 * torch.log10(4.0 / mse)


def ssim_batch(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """SSIM of each pair of images in [-1, 1] with the settings of tools.evaluate (metrics.structural.ssim: Gaussian
    window sigma 1.5 with 11 taps and an 11 px window (a 5 px border strip left out), population statistics,
    scored in [0, 1]: Wang et al. and scikit-image's gaussian_weights=True defaults)."""
    return ssim(x.float().clamp(-1, 1), y.float().clamp(-1, 1)).tolist()


class AutoencoderTask(Task):
    """Reconstruction (L1/L2 + optional LPIPS) + VQ or KL term + PatchGAN loss with an adaptive weight."""

    log_fields = ("rec", "regulariser", "perplexity", "g_weight", "g_loss", "d_loss")

    def __init__(
        self,
        rec_loss: str = "l1",
        perceptual: nn.Module | None = None,
        perceptual_weight: float = 1.0,
        discriminator: nn.Module | None = None,
        disc_start: int = 0,
        disc_weight: float = 0.5,
    ):
        super().__init__()
        self.rec_loss = rec_loss
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.discriminator = discriminator
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        self._pair: tuple[torch.Tensor, torch.Tensor] | None = None

    def discriminator_active(self) -> bool:
        return self.discriminator is not None and self.step >= self.disc_start

    def reconstruction_loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        diff = (recon.float() - x.float()).abs() if self.rec_loss == "l1" else (recon.float() - x.float()) ** 2
        loss = diff.mean()
        if self.perceptual is not None:
            self.perceptual.to(x.device)
            loss = loss + self.perceptual_weight * self.perceptual(recon.float(), x.float()).mean()
        return loss

    def training_loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x = batch["image"].to(device, non_blocking=True)
        recon, aux = model(x)
        rec = self.reconstruction_loss(recon, x)
        regulariser = aux["vq_loss"] if "vq_loss" in aux else aux["kl_loss"]
        loss = rec + regulariser
        logs = {"rec": float(rec.detach()), "regulariser": float(regulariser.detach())}
        if "perplexity" in aux:
            logs["perplexity"] = float(aux["perplexity"])
        if self.discriminator_active():
            g_loss = generator_adv_loss(self.discriminator(recon))
            last_layer = getattr(model, "module", model).last_layer
            weight = adaptive_weight(rec, g_loss, last_layer) * self.disc_weight
            loss = loss + weight * g_loss
            logs.update(g_weight=float(weight), g_loss=float(g_loss.detach()))
        self._pair = (x.detach(), recon.detach())
        self.last_logs = logs
        return loss

    def discriminator_loss(self, discriminator: nn.Module, device: torch.device) -> torch.Tensor:
        """Hinge loss of the discriminator on the last batch's real images and reconstructions."""
        real, fake = self._pair
        d_loss = hinge_d_loss(discriminator(real), discriminator(fake))
        self.last_logs["d_loss"] = float(d_loss.detach())
        return d_loss

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device, max_batches: int = 0) -> dict[str, float]:
        rec, psnrs, ssims, perplexity, usage, batches = 0.0, [], [], 0.0, 0.0, 0
        for batch in limited(loader, max_batches):
            x = batch["image"].to(device)
            recon, aux = model(x)
            rec += float(self.reconstruction_loss(recon, x)) * x.shape[0]
            psnrs += psnr(recon, x).tolist()
            ssims += ssim_batch(recon, x)
            perplexity += float(aux.get("perplexity", 0.0))
            usage += float(aux.get("usage", 0.0))
            batches += 1
        if not psnrs:
            return {"loss": float("nan")}
        metrics = {"loss": rec / len(psnrs), "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}
        if perplexity:
            metrics.update(perplexity=perplexity / batches, codebook_usage=usage / batches)
        return metrics

    @torch.no_grad()
    def write_pictures(self, model: nn.Module, loader: Iterable, device: torch.device, path: Path) -> None:
        """A grid of validation images (top row) and their reconstructions (bottom row)."""
        x = next(iter(loader))["image"][:8].to(device)
        recon, _ = model(x)
        grid = labelled_grid([list(x.cpu()), list(recon.float().cpu())], [["real"] * len(x), ["reconstruction"] * len(x)],
                             scale=1 if x.shape[-1] >= 96 else 2, caption_lines=1)
        save_image_atomic(grid, path)
