"""Downstream check of generated tiles: a small UNet nucleus segmenter trained on real and synthetic tiles.

A tiled folder holds `images/*.png` (RGB), `bin_masks/*.png` or `labels/*.png` (nucleus foreground, 0/255;
`labels/` wins when both exist) and `inst_masks/*.tif` (uint16 instance ids), matched by file stem. One SegNet
is trained per share of synthetic tiles in each batch and scored on held-out real tiles (Dice, object F1).

`python -m tools.segmentation --real DIR --synthetic GEN_DIR --ratios 0,0.5 --out results/downstream.csv`
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from skimage.measure import label  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.cli import run_main  # noqa: E402
from common.errors import ConfigError, DataError  # noqa: E402
from common.files import save_figure_atomic, write_csv_atomic  # noqa: E402
from data.monuseg import (  # noqa: E402
    TILE_NAME,
    mask_tile_files,
    read_binary_mask,
    read_instance_mask,
    read_rgb,
    source_of,
)
from data.mixing import mixed_count  # noqa: E402
from data.splits import split_by_group  # noqa: E402
from common.runtime import pick_device  # noqa: E402

RESULT_COLUMNS = ("ratio", "n_real", "n_synthetic", "dice", "f1", "precision", "recall")


@dataclass(frozen=True)
class Tile:
    """One tile: H x W x 3 uint8 image, H x W bool nucleus mask and H x W int32 instance ids (0 = background)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray


# ---------------------------------------------------------------------------------------------- tiled folders


def read_tile(image_path: Path, mask_path: Path | None, instance_path: Path | None) -> Tile:
    """Read one tile; without a binary mask the mask is `instances > 0`, without ids the instances are its components."""
    image = read_rgb(image_path)
    size = image.shape[:2]
    mask = read_binary_mask(mask_path) if mask_path is not None else None
    instances = read_instance_mask(instance_path).astype(np.int32) if instance_path is not None else None
    for path, array in ((mask_path, mask), (instance_path, instances)):
        if array is not None and array.shape != size:
            raise DataError(f"{path}: mask is {array.shape[0]}x{array.shape[1]} px but image {image_path} is {size[0]}x{size[1]} px")
    if mask is None:
        mask = instances > 0
    if instances is None:
        instances = label(mask, connectivity=1).astype(np.int32)
    return Tile(image_path.stem, image, mask, instances)


def read_tiled_folder(folder: str | os.PathLike) -> list[Tile]:
    """All tiles of `folder` (images/ with labels/ or bin_masks/ and/or inst_masks/), sorted by name."""
    return [read_tile(*paths) for paths in mask_tile_files(folder).values()]


TileSource = Union[str, os.PathLike, Tile, tuple]


def as_tiles(source: TileSource | Sequence[TileSource] | None, what: str = "tile") -> list[Tile]:
    """Tiles from a tiled folder, Tile objects, (image, mask) or (image, mask, instances) arrays, or a list of them."""
    if source is None:
        return []
    if isinstance(source, (str, os.PathLike)):
        return read_tiled_folder(source)
    if isinstance(source, Tile):
        return [source]
    if isinstance(source, tuple) and len(source) in (2, 3) and isinstance(source[0], np.ndarray):
        return [_tile_from_arrays(source, f"{what}_0")]
    tiles: list[Tile] = []
    for index, item in enumerate(source):
        if isinstance(item, tuple):
            tiles.append(_tile_from_arrays(item, f"{what}_{index}"))
        else:
            tiles.extend(as_tiles(item, what))
    return tiles


def _tile_from_arrays(arrays: tuple, name: str) -> Tile:
    if len(arrays) not in (2, 3):
        raise ValueError(f"{name}: expected (image, mask) or (image, mask, instances), got {len(arrays)} arrays")
    image, mask = np.asarray(arrays[0]), np.asarray(arrays[1])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: image must be an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{name}: mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    mask = mask > 0
    instances = np.asarray(arrays[2]).astype(np.int32) if len(arrays) == 3 else label(mask, connectivity=1).astype(np.int32)
    if instances.shape != mask.shape:
        raise ValueError(f"{name}: instance shape {instances.shape} does not match image shape {image.shape[:2]}")
    return Tile(name, image, mask, instances)


# ---------------------------------------------------------------------------------------------- network


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """A plain UNet: `depth` max-pool levels of two conv-BN-ReLU, transposed-conv up, skips, one logit per pixel."""

    def __init__(self, in_channels: int = 3, base: int = 16, depth: int = 3) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("base", base)):
            if value < 1:
                raise ValueError(f"SegNet {name} must be at least 1, got {value}")
        if depth < 0:
            raise ValueError(f"SegNet depth must be non-negative, got {depth}")
        widths = [base * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList([_conv_block(in_channels, widths[0])] + [_conv_block(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.decoder = nn.ModuleList([_conv_block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.config = {"in_channels": in_channels, "base": base, "depth": depth}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, 1, H, W) logits; any H, W (padded to a multiple of 2**depth inside)."""
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(F.max_pool2d(x, 2) if level else x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(self.depth)):
            x = self.decoder[level](torch.cat([skips.pop(), self.up[level](x)], dim=1))
        return self.head(x)[..., :height, :width]


def image_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.array(images, copy=True)).float().movedim(-1, -3) / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------- metrics


def dice_score(pred_bin: np.ndarray, true_bin: np.ndarray) -> float:
    """2|P & T| / (|P| + |T|) of two foreground masks (non-zero = foreground); 1 when both are empty."""
    pred, true = np.asarray(pred_bin) > 0, np.asarray(true_bin) > 0
    if pred.shape != true.shape:
        raise ValueError(f"dice_score: prediction shape {pred.shape} does not match truth shape {true.shape}")
    total = int(pred.sum()) + int(true.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & true).sum()) / total


def match_objects(pred_inst: np.ndarray, true_inst: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, predicted objects, true objects): one-to-one matches with IoU >= `iou` (Hungarian).

    Among matchings the one with the most pairs wins, ties broken by the summed IoU.
    """
    if not 0 < iou <= 1:
        raise ValueError(f"iou threshold must be in (0, 1], got {iou}")
    pred_ids, pred = np.unique(pred_inst, return_inverse=True)
    true_ids, true = np.unique(true_inst, return_inverse=True)
    pred = pred.reshape(-1) + (0 if pred_ids[0] == 0 else 1)
    true = true.reshape(-1) + (0 if true_ids[0] == 0 else 1)
    n_pred, n_true = int(pred.max()), int(true.max())
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    joint = np.bincount(pred * (n_true + 1) + true, minlength=(n_pred + 1) * (n_true + 1)).reshape(n_pred + 1, n_true + 1)
    inter = joint[1:, 1:].astype(np.float64)
    union = joint[1:, :].sum(1, keepdims=True) + joint[:, 1:].sum(0, keepdims=True) - inter
    overlap = inter / union
    valid = overlap >= iou
    weight = np.where(valid, min(n_pred, n_true) + 1 + overlap, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return int(valid[rows, cols].sum()), n_pred, n_true


def object_f1(pred_bin: np.ndarray, true_inst: np.ndarray, iou: float = 0.5) -> tuple[float, float, float]:
    """(F1, precision, recall) of the predicted mask's connected components against the true instances.

    Components use 4-connectivity; an empty prediction of an empty truth scores 1 on all three.
    """
    pred_bin, true_inst = np.asarray(pred_bin), np.asarray(true_inst)
    if pred_bin.shape != true_inst.shape:
        raise ValueError(f"object_f1: prediction shape {pred_bin.shape} does not match truth shape {true_inst.shape}")
    tp, n_pred, n_true = match_objects(label(pred_bin > 0, connectivity=1), true_inst, iou)
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / n_pred if n_pred else float(fn == 0)
    recall = tp / n_true if n_true else float(fp == 0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return f1, precision, recall


# ---------------------------------------------------------------------------------------------- training


class MixedBatchSampler:
    """Which tiles make up a batch: floor(rB) or ceil(rB) synthetic tiles (expected share exactly r), rest real."""

    def __init__(self, n_real: int, n_synthetic: int, ratio: float, batch_size: int, rng: np.random.Generator) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if ratio > 0 and n_synthetic == 0:
            raise ValueError(f"ratio {ratio} needs synthetic tiles, but none were given")
        if ratio < 1 and n_real == 0:
            raise ValueError(f"ratio {ratio} needs real tiles, but none were given")
        self.n_real, self.n_synthetic, self.ratio, self.batch_size, self.rng = n_real, n_synthetic, ratio, batch_size, rng

    def draw(self) -> list[tuple[str, int]]:
        """One batch as (source, index) pairs, source 'real' or 'synthetic', tiles drawn uniformly with replacement."""
        n_synthetic = mixed_count(self.ratio, self.batch_size, self.rng)
        synthetic = self.rng.integers(0, self.n_synthetic, n_synthetic) if n_synthetic else []
        real = self.rng.integers(0, self.n_real, self.batch_size - n_synthetic) if n_synthetic < self.batch_size else []
        return [("synthetic", int(i)) for i in synthetic] + [("real", int(i)) for i in real]


def random_crop(tile: Tile, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A size x size crop of image and mask at a random place, under one of the 8 exact rotations/flips."""
    height, width = tile.mask.shape
    top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
    image = tile.image[top : top + size, left : left + size]
    mask = tile.mask[top : top + size, left : left + size]
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return image, mask


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss (1 - soft Dice over the whole batch)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + eps) / (prob.sum() + target.sum() + eps)
    return bce + 1 - dice


def _resolve_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else pick_device(device)


def train_segmentation(
    real: TileSource | Sequence[TileSource] | None,
    synthetic: TileSource | Sequence[TileSource] | None = None,
    ratio: float = 0.0,
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    crop_size: int = 128,
    base: int = 16,
    depth: int = 3,
) -> SegNet:
    """Train a SegNet with BCE + soft Dice on random crops; `ratio` is the share of synthetic tiles per batch.

    Crops are `crop_size` px, or the smallest tile side when a tile in use is smaller. The returned model is in
    eval mode and carries `loss_history`, the loss of every step.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if crop_size < 1:
        raise ValueError(f"crop_size must be at least 1, got {crop_size}")
    pools = {"real": as_tiles(real, "real") if ratio < 1 else [], "synthetic": as_tiles(synthetic, "synthetic") if ratio > 0 else []}
    rng = np.random.default_rng(seed)
    sampler = MixedBatchSampler(len(pools["real"]), len(pools["synthetic"]), ratio, batch_size, rng)
    crop = min([crop_size] + [min(t.mask.shape) for pool in pools.values() for t in pool])
    device = _resolve_device(device)
    torch.manual_seed(seed)
    model = SegNet(base=base, depth=depth).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc=f"segmentation r={ratio:g}", disable=not progress, dynamic_ncols=True, leave=False)
    for _ in bar:
        crops = [random_crop(pools[source][index], crop, rng) for source, index in sampler.draw()]
        images = image_to_tensor(np.stack([image for image, _ in crops])).to(device)
        masks = torch.from_numpy(np.stack([mask for _, mask in crops])).float().unsqueeze(1).to(device)
        loss = segmentation_loss(model(images), masks)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    model.loss_history = losses
    return model


@torch.no_grad()
def predict_mask(model: SegNet, image: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """H x W bool nucleus mask of one H x W x 3 uint8 image (sigmoid > threshold)."""
    device = next(model.parameters()).device
    logits = model(image_to_tensor(image)[None].to(device))
    return (torch.sigmoid(logits)[0, 0] > threshold).cpu().numpy()


def evaluate_segmentation(model: SegNet, held_out: TileSource | Sequence[TileSource], threshold: float = 0.5) -> dict[str, float]:
    """Dice, object F1, precision and recall of the model on each held-out tile, averaged over tiles."""
    tiles = as_tiles(held_out, "held_out")
    if not tiles:
        raise ValueError("evaluate_segmentation: no held-out tiles")
    was_training = model.training
    model.eval()
    scores = []
    for tile in tiles:
        pred = predict_mask(model, tile.image, threshold)
        f1, precision, recall = object_f1(pred, tile.instances)
        scores.append((dice_score(pred, tile.mask), f1, precision, recall))
    model.train(was_training)
    mean = np.mean(scores, axis=0)
    return {"dice": float(mean[0]), "f1": float(mean[1]), "precision": float(mean[2]), "recall": float(mean[3])}


# ---------------------------------------------------------------------------------------------- downstream run


def split_by_name(names: Iterable[str], held_out_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) tile names, drawn by the seed; the tiles of one source image stay together.

    round(fraction * n) of the n source images (at least one, never all) are held out. With a single source
    image the tiles themselves are split.
    """
    names = sorted(set(names))
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {held_out_fraction}")
    if len(names) < 2:
        raise ValueError(f"need at least 2 real tiles to hold some out, got {len(names)}")
    group = source_of if len({source_of(n) for n in names}) >= 2 else (lambda name: name)
    return split_by_group(names, held_out_fraction, seed, group)


def comes_from(name: str, held_names: set[str], held_sources: set[str]) -> bool:
    """True if a generated tile's name, or a '_'-separated tail of it, names a held-out tile or source image.

    Generated tiles are named after their layout's tile (`..._{image}_{y}_{x}`), so this finds the ones whose
    nuclei masks are held-out masks, or tiles of a held-out image.
    """
    parts = name.split("_")
    tails = ["_".join(parts[i:]) for i in range(len(parts))]
    return any(tail in held_names or (TILE_NAME.match(tail) and source_of(tail) in held_sources) for tail in tails)


def format_table(rows: Sequence[dict]) -> str:
    """The result rows as an aligned text table."""
    lines = ["  ".join(f"{c:>11}" for c in RESULT_COLUMNS)]
    for row in rows:
        cells = [f"{row['ratio']:>11g}", f"{row['n_real']:>11d}", f"{row['n_synthetic']:>11d}"]
        cells += [f"{row[c]:>11.4f}" for c in RESULT_COLUMNS[3:]]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def plot_downstream(rows: Sequence[dict], path: Path) -> None:
    """Bars of Dice and object F1 per synthetic ratio, written atomically."""
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows) + 2), 3.5), dpi=120)
    for offset, key, name in ((-0.2, "dice", "Dice"), (0.2, "f1", "object F1")):
        values = [row[key] for row in rows]
        bars = ax.bar(x + offset, values, width=0.4, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [f"{row['ratio']:g}" for row in rows])
    ax.set_xlabel("share of synthetic tiles per batch")
    ax.set_ylabel("score on held-out real tiles")
    ax.set_ylim(0, 1.08)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def run_downstream(
    real_dir: str | os.PathLike,
    synthetic_dirs: Sequence[str | os.PathLike],
    ratios: Sequence[float],
    held_out_fraction: float = 0.3,
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    out_csv: str | os.PathLike = "results/downstream.csv",
    device: str | torch.device = "auto",
    crop_size: int = 128,
    overwrite: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Train one SegNet per ratio (same seed) on the real training split plus synthetic tiles; score held-out real tiles.

    Real tiles are split by source image (`split_by_name`); synthetic tiles made from held-out layouts are left out
    (`comes_from`). Writes `out_csv` (one row per ratio) and a bar plot with the same name and a .png suffix.
    """
    out = Path(out_csv)
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it")
    ratios = list(ratios)
    if not ratios:
        raise ConfigError("--ratios: expected at least one ratio")
    bad = [r for r in ratios if not 0 <= r <= 1]
    if bad:
        raise ConfigError(f"--ratios: every ratio must be in [0, 1], got {bad}")
    if not 0 < held_out_fraction < 1:
        raise ConfigError(f"--held_out must be in (0, 1), got {held_out_fraction}")
    if any(r > 0 for r in ratios) and not synthetic_dirs:
        raise ConfigError("--synthetic: ratios above 0 need at least one folder of synthetic tiles")
    device = _resolve_device(device)
    real = read_tiled_folder(real_dir)
    try:
        train_names, held_names = split_by_name([t.name for t in real], held_out_fraction, seed)
    except ValueError as err:
        raise ConfigError(f"--real {real_dir}: {err}") from None
    held = set(held_names)
    train_real = [t for t in real if t.name not in held]
    held_out = [t for t in real if t.name in held]
    held_sources = {source_of(n) for n in held_names} - {source_of(n) for n in train_names}
    synthetic_all = [tile for folder in synthetic_dirs for tile in read_tiled_folder(folder)]
    synthetic = [t for t in synthetic_all if not comes_from(t.name, held, held_sources)]
    if len(synthetic) < len(synthetic_all):
        print(f"left out {len(synthetic_all) - len(synthetic)} synthetic tiles whose layouts come from held-out real tiles")
    if any(r > 0 for r in ratios) and not synthetic:
        raise ConfigError("--synthetic: no synthetic tiles are left once those made from held-out layouts are left out")
    print(f"real tiles: {len(train_real)} for training, {len(held_out)} held out; synthetic tiles: {len(synthetic)}")
    rows = []
    for ratio in ratios:
        model = train_segmentation(train_real, synthetic, ratio, steps, batch_size, lr, seed, device, progress, crop_size)
        metrics = evaluate_segmentation(model, held_out)
        rows.append({"ratio": ratio, "n_real": len(train_real) if ratio < 1 else 0, "n_synthetic": len(synthetic) if ratio > 0 else 0, **metrics})
    print(format_table(rows))
    write_csv_atomic(out, RESULT_COLUMNS, rows)
    plot_downstream(rows, out.with_suffix(".png"))
    print(f"results: {out}, plot: {out.with_suffix('.png')}")
    return rows


def parse_ratios(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--ratios: expected comma-separated numbers in [0, 1], got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a nucleus segmenter on real plus synthetic tiles and score it on held-out real tiles.")
    p.add_argument("--real", required=True, help="tiled folder of real tiles (images/, bin_masks/ or labels/, inst_masks/)")
    p.add_argument("--synthetic", nargs="+", default=[], help="tiled folders of generated tiles (labels/ or bin_masks/)")
    p.add_argument("--ratios", default="0,0.5", help="shares of synthetic tiles per batch, one model each (default 0,0.5)")
    p.add_argument("--steps", type=int, default=300, help="training steps per model (default 300)")
    p.add_argument("--batch_size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the crops and the weights (default 0)")
    p.add_argument("--held_out", type=float, default=0.3, help="share of real tiles held out for scoring (default 0.3)")
    p.add_argument("--crop_size", type=int, default=128, help="training crop size in px (default 128)")
    p.add_argument("--out", default="results/downstream.csv", help="results CSV; the plot goes next to it (.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def run(argv: Sequence[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    for name, value in (("steps", args.steps), ("batch_size", args.batch_size), ("crop_size", args.crop_size)):
        if value < 1:
            raise ConfigError(f"--{name} must be at least 1, got {value}")
    if args.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {args.lr}")
    return run_downstream(
        args.real, args.synthetic, parse_ratios(args.ratios), args.held_out, args.steps, args.batch_size, args.lr,
        args.seed, args.out, args.device, args.crop_size, args.overwrite,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
