"""What the trainer optimises and validates for each kind of model: the loss of a batch and the validation metrics."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from diffusion.gaussian_diffusion import GaussianDiffusion

VALIDATION_SEED = 1234


def limited(loader: Iterable, max_batches: int) -> Iterable:
    """The first max_batches batches of a loader (all when max_batches is 0)."""
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        yield batch


class DiffusionTask:
    """Denoising loss of GaussianDiffusion; validation uses a fixed generator so runs are comparable."""

    monitor = "loss"
    higher_is_better = False

    def __init__(self, diffusion: GaussianDiffusion, conditions: Iterable[str]):
        self.diffusion = diffusion
        self.conditions = tuple(conditions)

    def _cond(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor] | None:
        if not self.conditions:
            return None
        return {name: batch[name].to(device, non_blocking=True) for name in self.conditions}

    def training_loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x0 = batch["image"].to(device, non_blocking=True)
        cond = self._cond(batch, device)
        return self.diffusion.training_losses(lambda x, t: model(x, t, cond), x0).mean()

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: Iterable, device: torch.device, max_batches: int = 0) -> dict[str, float]:
        generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
        total, count = 0.0, 0
        for batch in limited(loader, max_batches):
            x0 = batch["image"].to(device)
            cond = self._cond(batch, device)
            t = self.diffusion.sample_timesteps(x0.shape[0], device, generator)
            noise = torch.randn(x0.shape, generator=generator, device=device)
            losses = self.diffusion.training_losses(lambda x, tt: model(x, tt, cond), x0, t=t, noise=noise)
            total += float(losses.sum())
            count += x0.shape[0]
        return {"loss": total / max(count, 1)}


class ClassifierTask:
    """Binary cross-entropy on the mitosis logit; targets may be soft (share of mitotic votes)."""

    monitor = "loss"
    higher_is_better = False

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
