"""ResNet mitosis classifiers with a one-logit head, and the ensemble that averages their probabilities."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from common.checkpoint import load_local_weights
from common.errors import ConfigError
from common.options import Option, number, number_list
from data.families import WSI_DATASETS
from recipes.base import Recipe
from recipes.tasks import ClassifierTask, Task

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# brightness, contrast and saturation factor ranges and the hue shift range of the mitotic-figure transition work
ORIGINAL_COLOR_JITTER = (0.4, 1.2, 0.5, 4.0, 0.6, 3.0, -0.15, 0.15)


class ResNetClassifier(nn.Module):
    """torchvision ResNet taking images in [-1, 1] and returning one mitosis logit per image; `upsample` > 1
    enlarges the images bilinearly by that factor first (64 px patches reach the ResNet as 256 px)."""

    def __init__(self, arch: str = "resnet18", upsample: int = 1):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"--model_type: expected one of {ARCHITECTURES}, got {arch!r}")
        if int(upsample) < 1:
            raise ValueError(f"--classifier_upsample: expected a factor of at least 1, got {upsample}")
        self.arch = arch
        self.upsample = int(upsample)
        self.backbone = getattr(models, arch)(weights=None)
        self.backbone.fc = nn.Linear(self.backbone.fc.in_features, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def config(self) -> dict:
        return {"arch": self.arch, "upsample": self.upsample}

    def load_pretrained(self, path: str | Path) -> None:
        """Load an ImageNet (torchvision) state dict from a local file; the 1000-class head is left out."""
        path = Path(path)
        missing, unexpected = load_local_weights(self.backbone, path, "pretrained_weights", ("fc.",),
                                                 f"is not a {self.arch} state dict")
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise ValueError(
                f"--pretrained_weights {path} does not fit {self.arch}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        x = ((x + 1.0) * 0.5 - self.mean) / self.std
        return self.backbone(x).squeeze(1)


class Ensemble(nn.Module):
    """Mean of the members' sigmoid probabilities; `member_probs` gives each member's too."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one classifier")
        self.members = nn.ModuleList(members)

    @torch.no_grad()
    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(num_members, B) probabilities."""
        return torch.stack([torch.sigmoid(m(x).float()) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member_probs(x).mean(0)



CLASSIFIER_OPTIONS = (
    Option("ensemble", number(int, 0), None, "train ensemble member N (own seed, folder resnet/Ensemble_N)", None, "classifier"),
    Option("pretrained_weights", str, None, "local torchvision ResNet state dict to start from", None, "classifier"),
    Option("classifier_upsample", number(int, 1), 1, "bilinear upsampling factor of the input before the ResNet, part of the model (stored in the checkpoint, applied at scoring too; 4 as the transition work did)", None, "classifier"),
    Option("color_jitter_p", number(float, 0, 1), 0.0, "probability of torchvision colour jitter on a training patch, before the pixel scaling (0: off; 0.5 as the transition work did)", None, "classifier"),
    Option("color_jitter", number_list(float, min_items=8, max_items=8), list(ORIGINAL_COLOR_JITTER), "jitter ranges: brightness, contrast, saturation factors (low,high each) and hue shift (low,high); default the transition work's", None, "classifier"),
)


def check_color_jitter(ranges: list[float]) -> None:
    """ConfigError unless the 8 numbers (the option table's count) are three factor ranges (0 <= low <= high) and a
    hue range in [-0.5, 0.5]."""
    expected = "8 numbers b_low,b_high,c_low,c_high,s_low,s_high,h_low,h_high (factors >= 0, hue in [-0.5, 0.5], low <= high)"
    pairs = list(zip(ranges[0::2], ranges[1::2]))
    factors_ok = all(0.0 <= low <= high for low, high in pairs[:3])
    hue_low, hue_high = pairs[3]
    if not factors_ok or not -0.5 <= hue_low <= hue_high <= 0.5:
        raise ConfigError(f"--color_jitter: expected {expected}, got {','.join(f'{v:g}' for v in ranges)}")


class Classifier(Recipe):
    """--model_type resnet18|resnet34|resnet50: a mitosis classifier, one member of the scoring ensemble."""

    summary = "torchvision ResNet with a one-logit head (BCE, soft targets); members of the scoring ensemble"
    demo_preset = "configs/demo_resnet.yaml"
    option_groups = ("slides", "wsi data", "classifier")
    options = CLASSIFIER_OPTIONS
    datasets = WSI_DATASETS
    losses = ("bce",)
    renders = False
    sampling_flags = False

    def wrong_loss_message(self, loss: str) -> str:
        return f"--loss_function {loss} is for diffusion; classifiers train with bce"

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        check_color_jitter(config["color_jitter"])
        if "color_jitter" in config.get("explicit", ()) and config["color_jitter_p"] == 0:
            raise ConfigError("--color_jitter sets the jitter ranges, but --color_jitter_p is 0 (no jitter): give --color_jitter_p too")

    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        return {"arch": self.name, "upsample": config["classifier_upsample"]}

    def upgrade(self, model_config: dict[str, Any]) -> dict[str, Any]:
        """Classifiers stored before --classifier_upsample took their input as it came (factor 1)."""
        return {"upsample": 1, **model_config}

    def build_network(self, model_config: dict[str, Any]) -> nn.Module:
        return ResNetClassifier(model_config["arch"], model_config.get("upsample", 1))

    def initialise(self, model: nn.Module, config: dict[str, Any]) -> None:
        """--pretrained_weights: a local torchvision state dict."""
        if config.get("pretrained_weights"):
            try:
                model.load_pretrained(config["pretrained_weights"])
            except (ValueError, FileNotFoundError) as err:
                raise ConfigError(str(err)) from None

    def task(self, config: dict[str, Any], model_config: dict[str, Any]) -> Task:
        return ClassifierTask()

    def run_dir(self, config: dict[str, Any]) -> Path:
        """<out_dir>/resnet[_<date>]/Ensemble_<N>."""
        suffix = f"_{config['date']}" if config.get("date") else ""
        member = config["ensemble"] if config["ensemble"] is not None else 0
        return Path(config["out_dir"]) / f"resnet{suffix}" / f"Ensemble_{member}"
