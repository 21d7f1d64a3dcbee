"""Semantic segmentation of tiles with a segmentation_models_pytorch UNet (the downstream model of STEDM):
trained on tile-pair folders mixed at fixed shares per batch, scored by IoU and Dice, pooled and per slide.

Loss: 0.1 * cross-entropy + 0.9 * soft Dice over the foreground classes (1..K-1), both over the pixels at least
--overlap px away from the tile border. Dice of class c: (2 sum(p g) + 1) / (sum(p) + sum(g) + 1), sums over the
kept pixels of the whole batch; the loss term is 1 - the mean over the foreground classes.

Metrics, from confusion matrices of the kept pixels (rows: true class, columns: predicted): per-class IoU
TP / (TP + FP + FN) and Dice 2 TP / (2 TP + FP + FN) (NaN for a class that is neither present nor predicted);
`iou` and `dice` are their means over the foreground classes of the pooled matrix; `slide_iou_mean` and
`slide_iou_var` (population variance) are over slides of the foreground-mean IoU of each slide's own matrix
(slides where it is NaN are left out).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from common.checkpoint import load_failure
from common.errors import ConfigError
from common.files import save_figure_atomic, staged_folder, write_csv_atomic
from common.options import Option, number
from data.families import SEGMENTATION_DATASETS
from data.tile_pairs import TilePairs, list_pairs, tile_size_of
from recipes.base import InferenceFlag, LoadedModel, Recipe, RenderContext
from recipes.tasks import Task, limited

CE_WEIGHT, DICE_WEIGHT, DICE_SMOOTH = 0.1, 0.9, 1.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Mix Transformer encoders downsample by 32 with 7x7 / 3x3 patch embeddings: tiles must be multiples of 32 px.
MIT_MULTIPLE = 32

SEGMENTATION_OPTIONS = (
    Option("seg_encoder", str, "resnet34", "segmentation_models_pytorch encoder of the UNet (e.g. resnet34, mit_b2 as in STEDM; mit_* need tiles of a multiple of 32 px); built without pretrained weights", None, "segmentation"),
    Option("seg_classes", number(int, 2), 2, "segmentation classes incl. background (mask pixel = class index)", None, "segmentation"),
    Option("overlap", number(int, 0), 0, "pixels at each tile border left out of the loss and the metrics", None, "segmentation"),
    Option("seg_weights", str, None, "local state dict to start from: of the encoder alone (e.g. a torchvision ResNet, fc left out) or of the whole UNet", None, "segmentation"),
)
TEST_DIR_FLAG = InferenceFlag(("--test_dir",), dict(help="segmentation: held-out folder of images/*.png + masks/*.png to score (default: the run's validation tiles)"))


class SegmentationNet(nn.Module):
    """smp.Unet taking images in [-1, 1] (normalised with the ImageNet statistics inside) -> K logits per pixel."""

    def __init__(self, encoder: str = "resnet34", classes: int = 2):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x + 1.0) * 0.5 - self.mean) / self.std)


def load_seg_weights(model: SegmentationNet, path: str | Path) -> str:
    """Load a local state dict: the whole UNet (keys with decoder.* / segmentation_head.*, optionally under net.)
    or its encoder (keys optionally under encoder.; a classifier head fc.* is left out). Returns which."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--seg_weights: file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's
        raise ConfigError(f"--seg_weights {path}: not a readable state dict ({load_failure(err)})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--seg_weights {path}: expected a state dict (parameter name -> tensor)")
    state = {k[4:] if k.startswith("net.") else k: v for k, v in state.items()}
    whole = any(k.startswith(("decoder.", "segmentation_head.")) for k in state)
    if not whole:
        state = {k[8:] if k.startswith("encoder.") else k: v for k, v in state.items() if not k.startswith("fc.")}
    target = model.net if whole else model.net.encoder
    try:
        target.load_state_dict(state)
    except RuntimeError as err:
        what = "UNet" if whole else "encoder"
        raise ConfigError(f"--seg_weights {path} does not fit the {what} of this --seg_encoder: {str(err)[:300]}") from None
    return "network" if whole else "encoder"


# ------------------------------------------------------------------------------------------- loss and metrics


def kept_pixels(height: int, width: int, overlap: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool H x W: True at least `overlap` px away from the border."""
    keep = torch.zeros(height, width, dtype=torch.bool, device=device)
    keep[overlap:height - overlap, overlap:width - overlap] = True
    return keep


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, overlap: int = 0) -> torch.Tensor:
    """0.1 * CE + 0.9 * (1 - mean foreground soft Dice) of B x K x H x W logits against B x H x W class indices."""
    logits = logits.float()
    classes = logits.shape[1]
    keep = kept_pixels(*target.shape[-2:], overlap, logits.device).expand_as(target)
    ce = F.cross_entropy(logits, target, reduction="none")[keep].mean()
    probs = logits.softmax(1).permute(0, 2, 3, 1)[keep]  # N x K
    truth = F.one_hot(target[keep], classes).float()
    inter = (probs * truth).sum(0)[1:]
    total = probs.sum(0)[1:] + truth.sum(0)[1:]
    dice = (2 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)
    return CE_WEIGHT * ce + DICE_WEIGHT * (1.0 - dice.mean())


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int, overlap: int = 0) -> np.ndarray:
    """K x K pixel counts (rows: true class, columns: predicted) of the kept pixels of H x W or B x H x W maps."""
    keep = kept_pixels(*target.shape[-2:], overlap, target.device).expand_as(target)
    index = target[keep].long() * classes + pred[keep].long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes).cpu().numpy().astype(np.int64)


def class_iou(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def class_dice(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(float)
    denom = matrix.sum(0) + matrix.sum(1)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)


def foreground_mean(values: np.ndarray) -> float:
    fg = values[1:]
    return float(np.nanmean(fg)) if np.isfinite(fg).any() else float("nan")


def segmentation_metrics(pooled: np.ndarray, per_slide: dict[str, np.ndarray]) -> dict[str, float]:
    """iou, dice (foreground means of the pooled matrix), iou_class<c>, slide_iou_mean / slide_iou_var."""
    ious = class_iou(pooled)
    metrics = {"iou": foreground_mean(ious), "dice": foreground_mean(class_dice(pooled))}
    metrics.update({f"iou_class{c}": float(v) for c, v in enumerate(ious)})
    slide_ious = np.array([foreground_mean(class_iou(m)) for m in per_slide.values()])
    finite = slide_ious[np.isfinite(slide_ious)]
    metrics["slide_iou_mean"] = float(finite.mean()) if finite.size else float("nan")
    metrics["slide_iou_var"] = float(finite.var()) if finite.size else float("nan")
    return metrics


def targets(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """B x H x W class indices of a batch's one-hot `semantic` masks."""
    return batch["semantic"].to(device, non_blocking=True).argmax(1)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, classes: int, overlap: int, device: torch.device) -> tuple[float, np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """Mean loss per tile, pooled confusion matrix, each slide's matrix and tile count."""
    total, count = 0.0, 0
    pooled = np.zeros((classes, classes), np.int64)
    per_slide: dict[str, np.ndarray] = {}
    tiles: dict[str, int] = {}
    for batch in batches:
        x, y = batch["image"].to(device), targets(batch, device)
        logits = model(x).float()
        total += float(ce_dice_loss(logits, y, overlap)) * x.shape[0]
        count += x.shape[0]
        pred = logits.argmax(1)
        for i, slide in enumerate(batch["meta"]["slide"]):
            m = confusion(pred[i], y[i], classes, overlap)
            pooled += m
            per_slide[slide] = per_slide.get(slide, 0) + m
            tiles[slide] = tiles.get(slide, 0) + 1
    return total / max(count, 1), pooled, per_slide, tiles


class SegmentationTask(Task):
    """CE + Dice loss with the border left out; validation: loss (monitored), IoU, Dice and per-slide IoU."""

    def __init__(self, classes: int, overlap: int = 0):
        super().__init__()
        self.classes = classes
        self.overlap = overlap

    def training_loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        x = batch["image"].to(device, non_blocking=True)
        return ce_dice_loss(model(x), targets(batch, device), self.overlap)

    def validate(self, model: nn.Module, loader: Iterable, device: torch.device, max_batches: int = 0) -> dict[str, float]:
        loss, pooled, per_slide, _ = evaluate(model, limited(loader, max_batches), self.classes, self.overlap, device)
        if not pooled.any():
            return {"loss": float("nan")}
        return {"loss": loss, **segmentation_metrics(pooled, per_slide)}


# ----------------------------------------------------------------------------------------------------- recipe


class SegmentationRecipe(Recipe):
    """--model_type segmentation: a UNet (segmentation_models_pytorch) on --dataset seg_tiles."""

    summary = "segmentation_models_pytorch UNet on tile/mask folders mixed per batch; IoU, Dice, per-slide IoU"
    demo_preset = "configs/demo_segmentation.yaml"
    option_groups = ("segmentation data", "segmentation")
    options = SEGMENTATION_OPTIONS
    datasets = SEGMENTATION_DATASETS
    losses = ("ce_dice",)
    default_ema_decay = 0.0
    sampling_flags = False

    def wrong_loss_message(self, loss: str) -> str:
        return f"--loss_function {loss} is for other model types; segmentation trains with ce_dice"

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        from segmentation_models_pytorch.encoders import get_encoder_names

        if config["seg_encoder"] not in get_encoder_names():
            raise ConfigError(f"--seg_encoder {config['seg_encoder']}: not a segmentation_models_pytorch encoder (e.g. resnet34, mit_b2)")
        if config["seg_weights"] and not Path(config["seg_weights"]).is_file():
            raise ConfigError(f"--seg_weights: file {config['seg_weights']} does not exist")

    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        size = data.tile_size
        if 2 * config["overlap"] >= size:
            raise ConfigError(f"--overlap {config['overlap']} leaves no pixels of the {size} px tiles (needs 2 * overlap < tile size)")
        if config["seg_encoder"].startswith("mit_") and size % MIT_MULTIPLE:
            raise ConfigError(f"--seg_encoder {config['seg_encoder']} needs tiles of a multiple of {MIT_MULTIPLE} px, the tiles are {size} px")
        return {"encoder": config["seg_encoder"], "classes": config["seg_classes"]}

    def build_network(self, model_config: dict[str, Any]) -> nn.Module:
        return SegmentationNet(model_config["encoder"], int(model_config["classes"]))

    def initialise(self, model: nn.Module, config: dict[str, Any]) -> None:
        if config.get("seg_weights"):
            load_seg_weights(model, config["seg_weights"])

    def task(self, config: dict[str, Any], model_config: dict[str, Any]) -> Task:
        return SegmentationTask(int(model_config["classes"]), config["overlap"])

    def inference_flags(self, loaded: LoadedModel) -> tuple[InferenceFlag, ...]:
        return (TEST_DIR_FLAG,)

    def all_inference_flags(self) -> tuple[InferenceFlag, ...]:
        return (TEST_DIR_FLAG,)

    def render(self, ctx: RenderContext) -> None:
        """Score the checkpoint on --test_dir (or the run's validation tiles): test_metrics.json, per_slide.csv/png."""
        if len(ctx.checkpoints) > 1:
            raise ConfigError("--ckpt: segmentation scores one checkpoint at a time")
        args, loaded = ctx.args, ctx.first
        classes, overlap = int(loaded.model_config["classes"]), int(loaded.config.get("overlap", 0))
        if args.test_dir:
            pairs = list_pairs(args.test_dir)
            tile_size_of(pairs)
            dataset, source = TilePairs(pairs, classes), str(args.test_dir)
        else:
            dataset, source = ctx.data.validation_set(loaded.config), "validation split of the run"
            if dataset is None:
                raise ConfigError(f"--ckpt {loaded.path}: the run has no validation tiles; pass --test_dir DIR")
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0)
        loss, pooled, per_slide, tiles = evaluate(loaded.model, loader, classes, overlap, ctx.device)
        metrics = {"loss": loss, **segmentation_metrics(pooled, per_slide), "tiles": len(dataset), "slides": len(per_slide),
                   "test_dir": source, "checkpoint": str(loaded.path), "step": loaded.step, "overlap": overlap}
        rows = [{"slide": s, "tiles": tiles[s], "iou": foreground_mean(class_iou(m)), "dice": foreground_mean(class_dice(m))}
                for s, m in sorted(per_slide.items())]

        def write(folder: Path) -> None:
            (folder / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            write_csv_atomic(folder / "per_slide.csv", ("slide", "tiles", "iou", "dice"), rows)
            plot_per_slide(rows, folder / "per_slide.png")

        out = Path(args.out_dir)
        staged_folder(out, write)
        print(f"{source}: IoU {metrics['iou']:.4f}, Dice {metrics['dice']:.4f}, per-slide IoU {metrics['slide_iou_mean']:.4f} "
              f"(var {metrics['slide_iou_var']:.4f}) over {len(rows)} slides ({out / 'test_metrics.json'})")


def plot_per_slide(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(rows) + 2), 3.2))
    ax.bar([r["slide"] for r in rows], [0.0 if np.isnan(r["iou"]) else r["iou"] for r in rows], color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU (foreground mean)")
    ax.set_xlabel("slide")
    ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)
