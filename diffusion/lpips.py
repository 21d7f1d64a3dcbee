"""LPIPS-style perceptual distance over a VGG16 or AlexNet backbone read from a local weights file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from common.checkpoint import load_failure

BACKBONE_FLAG = "--perceptual_weights"
LINEAR_FLAG = "--lpips_weights"
# Input scaling of the LPIPS networks: (x - shift) / scale on images in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10


@dataclass(frozen=True)
class BackboneSpec:
    """Where the five feature taps sit in torchvision's `features` Sequential, and their channel counts."""

    build: str
    taps: tuple[int, ...]
    channels: tuple[int, ...]


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("vgg16", taps=(3, 8, 15, 22, 29), channels=(64, 128, 256, 512, 512)),
    "alexnet": BackboneSpec("alexnet", taps=(1, 4, 7, 9, 11), channels=(64, 192, 384, 256, 256)),
}

_TORCHVISION_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")
_LPIPS_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.(weight|bias)$")
_LINEAR_KEY = re.compile(r"^lin(\d+)\.(?:model\.1\.)?weight$")


def _read_state_dict(path: str | Path | None, flag: str) -> dict[str, Tensor]:
    if path is None or str(path) == "":
        raise FileNotFoundError(f"no perceptual weights file given: set {flag} to a local file")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual weights file not found: {path} (set {flag} to a local file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable torch state dict ({flag}): {load_failure(error)}") from None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} must hold a state dict (a mapping of names to tensors) ({flag})")
    return dict(state)


def _backbone_weights(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision `features.N.*` or LPIPS `net.sliceK.N.*` entries, keyed `N.*`."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _TORCHVISION_KEY.match(key) or _LPIPS_KEY.match(key)
        if match:
            out[f"{match.group(1)}.{match.group(2)}"] = value
    return out


def _linear_weights(state: Mapping[str, Tensor]) -> dict[int, Tensor]:
    """LPIPS calibration weights `linK.model.1.weight` (or `linK.weight`), keyed by layer index K."""
    out: dict[int, Tensor] = {}
    for key, value in state.items():
        match = _LINEAR_KEY.match(key)
        if match:
            out[int(match.group(1))] = value
    return out


def _build_features(spec: BackboneSpec) -> nn.Sequential:
    """torchvision's feature stack up to the last tap, allocated uninitialised (its weights are loaded next)."""
    with torch.device("meta"):
        network = getattr(torchvision.models, spec.build)(weights=None)
    features = network.features[: spec.taps[-1] + 1]
    return features.to_empty(device="cpu")


class LPIPS(nn.Module):
    """Perceptual distance d(x, y) -> (B,) between images in [-1, 1], frozen and always in eval mode.

    Features at five layers are unit-normalised along channels; their squared differences are weighted per
    channel by non-negative 1x1 convs, averaged over pixels and summed over layers. The channel weights are the
    LPIPS calibration weights when given (`linear_weights_path`, or `lin*` entries in the backbone file), else
    uniform 1/C (the uncalibrated distance; `calibrated` says which).
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        weights_path: str | Path | None = None,
        linear_weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        spec = BACKBONES[backbone]
        self.backbone = backbone
        self.taps = spec.taps
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

        state = _read_state_dict(weights_path, BACKBONE_FLAG)
        self.features = _build_features(spec)
        self._load_backbone(state, weights_path)

        linear_state = state if linear_weights_path is None else _read_state_dict(linear_weights_path, LINEAR_FLAG)
        linear = _linear_weights(linear_state)
        if linear_weights_path is not None and not linear:
            raise ValueError(f"{linear_weights_path} holds no LPIPS linear weights (keys 'linK.model.1.weight')")
        self.calibrated = bool(linear)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec.channels)
        for index, (conv, channels) in enumerate(zip(self.lins, spec.channels)):
            if self.calibrated:
                source = weights_path if linear_weights_path is None else linear_weights_path
                conv.weight.data.copy_(self._checked_linear(linear, index, channels, source))
            else:
                conv.weight.data.fill_(1.0 / channels)

        self.requires_grad_(False)
        self.eval()

    def _load_backbone(self, state: Mapping[str, Tensor], path: str | Path) -> None:
        weights = _backbone_weights(state)
        expected = self.features.state_dict()
        missing = sorted(set(expected) - set(weights))
        wrong = sorted(k for k in expected if k in weights and weights[k].shape != expected[k].shape)
        if missing or wrong:
            detail = f"missing {missing}" if missing else f"wrong shapes for {wrong}"
            raise ValueError(
                f"{path} does not fit a torchvision {self.backbone} backbone ({detail}); expected "
                f"torchvision keys 'features.N.weight' or LPIPS keys 'net.sliceK.N.weight'"
            )
        self.features.load_state_dict({k: weights[k] for k in expected})

    @staticmethod
    def _checked_linear(linear: Mapping[int, Tensor], index: int, channels: int, path: str | Path) -> Tensor:
        if index not in linear:
            raise ValueError(
                f"{path} holds no LPIPS linear weights for layer {index} (key 'lin{index}.model.1.weight')"
            )
        weight = linear[index]
        if weight.numel() != channels:
            raise ValueError(
                f"{path}: LPIPS linear weights lin{index} have {weight.numel()} entries, expected {channels}"
            )
        if (weight < 0).any():
            raise ValueError(f"{path}: LPIPS linear weights lin{index} must be non-negative")
        return weight.reshape(1, channels, 1, 1)

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode: the distance is a fixed metric."""
        return super().train(False)

    def _taps(self, x: Tensor) -> list[Tensor]:
        h = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out: list[Tensor] = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in self.taps:
                out.append(h)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"x and y must be RGB images of one shape (B, 3, H, W), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        batch = x.shape[0]
        distance = x.new_zeros(batch, dtype=torch.float32)
        for features, lin in zip(self._taps(torch.cat([x, y])), self.lins):
            features = features.float()
            features = features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + _NORM_EPS)
            diff = (features[:batch] - features[batch:]).pow(2)
            distance = distance + lin(diff.to(lin.weight.dtype)).float().mean(dim=(1, 2, 3))
        return distance
