"""Vector quantisation with a straight-through estimator, EMA codebook updates and dead-code restarts."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from diffusion.network_inputs import positive_int


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def code_perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the code-usage distribution given by per-code counts (K,)."""
    probs = counts.float() / counts.sum().clamp(min=1)
    entropy = -torch.special.xlogy(probs, probs).sum()
    return torch.exp(entropy)


class VectorQuantizer(nn.Module):
    """Snap each dim-vector of z (B, dim, ...) to its nearest of codebook_size codes (L2 distance).

    The output passes gradients straight through to z. The loss holds the commitment term
    commitment_weight * mean((z - sg(z_q))^2) and, when the codebook is learned by gradients (use_ema=False),
    the codebook term mean((sg(z) - z_q)^2). With use_ema=True the codebook is a buffer updated in training mode
    by exponential moving averages of the cluster sizes and of the summed encodings (Laplace-smoothed). In
    training, codes whose EMA cluster size falls below dead_code_threshold are restarted on random encodings
    of the current batch (0 disables restarts). Distances and statistics are computed in float32; under
    torch.distributed the statistics are all-reduced and restarted codes broadcast from rank 0, so every rank
    holds the same codebook.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_threshold: float = 1.0,
        use_ema: bool = True,
    ) -> None:
        super().__init__()
        positive_int("codebook_size", codebook_size)
        positive_int("dim", dim)
        if commitment_weight < 0:
            raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold}")
        self.codebook_size = codebook_size
        self.dim = dim
        self.commitment_weight = float(commitment_weight)
        self.ema_decay = float(ema_decay)
        self.eps = float(eps)
        self.dead_code_threshold = float(dead_code_threshold)
        self.use_ema = bool(use_ema)

        initial = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        if self.use_ema:
            self.register_buffer("codebook", initial)
            self.register_buffer("embed_sum", initial.clone())
        else:
            self.codebook = nn.Parameter(initial)
        # Every code starts with an EMA cluster size of one: alive, and (with EMA) averaging its initial vector.
        self.register_buffer("cluster_size", torch.ones(codebook_size))

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, use_ema={self.use_ema}, "
            f"ema_decay={self.ema_decay}, dead_code_threshold={self.dead_code_threshold}"
        )

    @torch.no_grad()
    def reset_codebook(self, vectors: Tensor) -> None:
        """Set the codes (e.g. from k-means of encodings) with fresh EMA statistics: cluster size one each."""
        if tuple(vectors.shape) != (self.codebook_size, self.dim):
            raise ValueError(
                f"vectors must have shape ({self.codebook_size}, {self.dim}), got {tuple(vectors.shape)}"
            )
        self.codebook.data.copy_(vectors)
        self.cluster_size.fill_(1.0)
        if self.use_ema:
            self.embed_sum.copy_(vectors)

    def _flatten(self, z: Tensor) -> Tensor:
        if z.dim() < 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (B, {self.dim}, ...), got {tuple(z.shape)}")
        return rearrange(z, "b c ... -> (b ...) c")

    def _nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of flat (N, dim), computed in float32 outside autocast."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            vectors = flat.detach().float()
            codebook = self.codebook.detach().float()
            distances = (
                vectors.pow(2).sum(1, keepdim=True)
                - 2.0 * vectors @ codebook.t()
                + codebook.pow(2).sum(1).unsqueeze(0)
            )
            return distances.argmin(dim=1)

    def _unflatten(self, flat: Tensor, z: Tensor) -> Tensor:
        """(N, C) rows back to z's layout (B, C, ...)."""
        moved = flat.reshape(z.shape[0], *z.shape[2:], flat.shape[-1])
        return moved.movedim(-1, 1)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest-code lookup only (no losses, no updates): (z_q in z's dtype, codes (B, ...))."""
        flat = self._flatten(z)
        codes = self._nearest(flat)
        z_q = self._unflatten(self.codebook.detach()[codes], z).to(z.dtype)
        return z_q, codes.reshape(z.shape[0], *z.shape[2:])

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors (B, dim, ...) for integer codes (B, ...)."""
        if codes.dtype.is_floating_point or codes.dim() < 1:
            raise ValueError(
                f"codes must be an integer tensor of shape (B, ...), got {codes.dtype} {tuple(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got values in "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return self.codebook[codes].movedim(-1, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
        flat = self._flatten(z)
        codes = self._nearest(flat)
        flat32 = flat.float()
        quantised = self.codebook[codes].float()
        loss = self.commitment_weight * F.mse_loss(flat32, quantised.detach())
        if not self.use_ema:
            loss = loss + F.mse_loss(flat32.detach(), quantised)
        straight_through = flat32 + (quantised - flat32).detach()
        z_q = self._unflatten(straight_through, z).to(z.dtype)

        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        if self.training:
            self._update(flat32.detach(), codes, counts)
        info = {
            "perplexity": code_perplexity(counts),
            "usage": (counts > 0).float().mean(),
            "codes": codes.reshape(z.shape[0], *z.shape[2:]),
        }
        return z_q, loss, info

    @torch.no_grad()
    def _update(self, flat: Tensor, codes: Tensor, counts: Tensor) -> None:
        """EMA statistics (and, with use_ema, the codebook) from one training batch, then dead-code restarts."""
        counts = counts.clone()
        sums = torch.zeros(self.codebook_size, self.dim, device=flat.device, dtype=torch.float32)
        sums.index_add_(0, codes, flat)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        decay = self.ema_decay
        self.cluster_size.mul_(decay).add_(counts, alpha=1.0 - decay)
        if self.use_ema:
            self.embed_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
            self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat: Tensor) -> None:
        if self.dead_code_threshold <= 0 or flat.shape[0] == 0:
            return
        dead = torch.nonzero(self.cluster_size < self.dead_code_threshold).squeeze(1)
        if dead.numel() == 0:
            return
        if flat.shape[0] >= dead.numel():
            picks = torch.randperm(flat.shape[0], device=flat.device)[: dead.numel()]
        else:
            picks = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        replacements = flat[picks].contiguous()
        if _distributed():
            dist.broadcast(replacements, src=0)
        self.codebook.data[dead] = replacements.to(self.codebook.dtype)
        self.cluster_size[dead] = self.dead_code_threshold
        if self.use_ema:
            self.embed_sum[dead] = replacements * self.dead_code_threshold
