"""Style conditioning (style-extracting diffusion): a trainable image encoder turns each of n reference crops into a
style vector, an aggregator merges the n vectors (permutation-invariant for mean, max and attention), and the
result is a vector condition added to the UNet's time embedding, with a learned null for guidance dropout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torchvision import models

from common.checkpoint import load_local_weights
from diffusion.conditioning import ConditionEmbedding
from diffusion.network_inputs import positive_int

BACKBONES = ("swin_v2_t", "resnet18", "resnet50", "efficientnet_b0")
AGGREGATORS = ("mean", "max", "linear", "attention")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _backbone(name: str) -> tuple[nn.Module, int]:
    """A torchvision network without its classification head, and the width of its pooled features."""
    if name not in BACKBONES:
        raise ValueError(f"style encoder must be one of {', '.join(BACKBONES)}, got {name!r}")
    network = getattr(models, name)(weights=None)
    if name.startswith("resnet"):
        width = network.fc.in_features
        network.fc = nn.Identity()
    elif name == "efficientnet_b0":
        width = network.classifier[-1].in_features
        network.classifier = nn.Identity()
    else:
        width = network.head.in_features
        network.head = nn.Identity()
    return network, width


class StyleEncoder(nn.Module):
    """Images (N, 3, H, W) in [-1, 1] -> style vectors (N, style_dim): a torchvision backbone and a projection."""

    def __init__(self, backbone: str = "resnet18", style_dim: int = 512, weights: str | None = None) -> None:
        super().__init__()
        positive_int("style_dim", style_dim)
        self.backbone, width = _backbone(backbone)
        if weights:
            self.load_backbone(weights)
        self.projection = nn.Linear(width, style_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def load_backbone(self, path: str | Path) -> None:
        """A local torchvision state dict of the backbone (its classification head is left out)."""
        path = Path(path)
        missing, unexpected = load_local_weights(self.backbone, path, "style_encoder_weights",
                                                 ("fc.", "classifier.", "head."), "does not fit the style encoder")
        if unexpected or missing:
            raise ValueError(f"--style_encoder_weights {path} does not fit the style encoder: "
                             f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")

    def forward(self, images: Tensor) -> Tensor:
        x = ((images.float() + 1.0) * 0.5 - self.mean) / self.std
        return self.projection(self.backbone(x.to(self.projection.weight.dtype)))


class AttentionPooling(nn.Module):
    """Pooling by multi-head attention (the set transformer's PMA): one learned query attends over the n vectors,
    followed by a residual feed-forward layer. Permutation-invariant in the n vectors."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        heads = max(h for h in range(1, heads + 1) if dim % h == 0)
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, vectors: Tensor) -> Tensor:
        pooled, _ = self.attention(self.query.expand(vectors.shape[0], -1, -1), vectors, vectors, need_weights=False)
        pooled = self.norm(pooled[:, 0])
        return pooled + self.feed_forward(pooled)


class StyleAggregator(nn.Module):
    """(B, n, D) style vectors of n reference crops -> (B, D): mean, max, an MLP on the concatenation (linear; order
    matters, n fixed), or attention pooling."""

    def __init__(self, mode: str, dim: int, num_images: int) -> None:
        super().__init__()
        if mode not in AGGREGATORS:
            raise ValueError(f"style aggregation must be one of {', '.join(AGGREGATORS)}, got {mode!r}")
        self.mode = mode
        self.num_images = positive_int("num_style_images", num_images)
        if mode == "linear":
            self.mlp = nn.Sequential(nn.Linear(num_images * dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        elif mode == "attention":
            self.pool = AttentionPooling(dim)

    def forward(self, vectors: Tensor) -> Tensor:
        if self.mode == "mean":
            return vectors.mean(1)
        if self.mode == "max":
            return vectors.amax(1)
        if self.mode == "linear":
            if vectors.shape[1] != self.num_images:
                raise ValueError(f"linear style aggregation takes exactly {self.num_images} style images, got {vectors.shape[1]}")
            return self.mlp(rearrange(vectors, "b n d -> b (n d)"))
        return self.pool(vectors)


class StyleEmbedding(ConditionEmbedding):
    """The `style` condition: reference crops (B, n, 3, H, W) in [-1, 1] -> encoder -> aggregator -> (B, dim)."""

    def __init__(self, dim: int, encoder: str = "resnet18", style_dim: int = 512, num_images: int = 1,
                 aggregation: str = "mean", encoder_weights: str | None = None) -> None:
        super().__init__(dim)
        self.encoder = StyleEncoder(encoder, style_dim, encoder_weights)
        self.aggregator = StyleAggregator(aggregation, style_dim, num_images)
        self.to_embedding = nn.Sequential(nn.Linear(style_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def embed(self, value: Tensor) -> Tensor:
        if value.dim() != 5 or value.shape[2] != 3:
            raise ValueError(f"style must have shape (B, n, 3, H, W), got {tuple(value.shape)}")
        batch = value.shape[0]
        vectors = self.encoder(rearrange(value, "b n c h w -> (b n) c h w"))
        return self.to_embedding(self.aggregator(rearrange(vectors, "(b n) d -> b n d", b=batch)))


def style_embedding(dim: int, num_labels: int, settings: dict[str, Any] | None = None) -> StyleEmbedding:
    """The factory the condition registry calls; `settings` holds the encoder's keyword arguments."""
    return StyleEmbedding(dim, **(settings or {}))
