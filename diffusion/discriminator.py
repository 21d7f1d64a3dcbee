"""PatchGAN discriminator and the adversarial losses used to train autoencoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusion.unet import group_norm

_KERNEL = 4


def _conv_side(side: int, stride: int) -> int:
    """Output side of a 4x4 conv with padding 1."""
    return (side + 2 - _KERNEL) // stride + 1


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per overlapping patch, shape (B, 1, h, w).

    Normalisation is GroupNorm, which (unlike BatchNorm) does not depend on the batch, so it behaves the same
    at batch size 1 or 2 and in training and eval mode.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        for name, value in [("in_channels", in_channels), ("channels", channels), ("num_layers", num_layers)]:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_channels = in_channels
        self.num_layers = num_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, _KERNEL, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, num_layers + 1):
            out = channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(width, out, _KERNEL, stride, 1, bias=False), group_norm(out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, _KERNEL, 1, 1))
        self.layers = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def output_side(self, side: int) -> int:
        """Side of the logit map for an input side (the input must be large enough for it to be >= 1)."""
        for _ in range(self.num_layers):
            side = _conv_side(side, 2)
        return _conv_side(_conv_side(side, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(self.output_side(x.shape[2]), self.output_side(x.shape[3])) < 1:
            raise ValueError(
                f"x of size {tuple(x.shape[2:])} is too small for a PatchDiscriminator "
                f"with num_layers={self.num_layers}"
            )
        return self.layers(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: Tensor) -> Tensor:
    """Generator loss -mean(logits_fake)."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """||d rec_loss / d last_layer|| / (||d g_loss / d last_layer|| + 1e-4), clamped to [0, max_weight], detached."""
    if max_weight < 0:
        raise ValueError(f"max_weight must be >= 0, got {max_weight}")
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
