"""Downstream check of generated tiles: the toolkit's segmentation model trained on real and synthetic tiles.

A tiled folder holds `images/*.png` (RGB), `bin_masks/*.png` or `labels/*.png` (nucleus foreground, 0/255;
`labels/` wins when both exist) and `inst_masks/*.tif` (uint16 instance ids), matched by file stem. The real
tiles are split by source image; for each share of synthetic tiles per batch (`--ratios`) one `--model_type
segmentation` run (train.py, `--dataset seg_tiles` mixing the real training tiles and the synthetic tiles) is
trained, and its last checkpoint is scored on the held-out real tiles (nucleus Dice, object F1). `--real_counts`
repeats this with only that many real training tiles and `--seeds` with several seeds (mean and spread).

`python -m tools.segmentation --real DIR --synthetic GEN_DIR --ratios 0,0.5 --out results/downstream.csv`
`python -m tools.segmentation --real DIR --synthetic GEN_DIR --real_counts 8,16,32 --seeds 0,1,2 --out results/small.csv`
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from skimage.measure import label  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

import train  # noqa: E402
from common.cli import Parser, run_main  # noqa: E402
from common.errors import ConfigError, DataError  # noqa: E402
from common.files import (  # noqa: E402
    check_replaceable,
    check_writable_output,
    mark_as_ours,
    remove_ours,
    save_figure_atomic,
    write_csv_atomic,
)
from common.options import number  # noqa: E402
from common.runtime import pick_device  # noqa: E402
from data.monuseg import (  # noqa: E402
    TILE_NAME,
    mask_tile_files,
    read_binary_mask,
    read_instance_mask,
    read_rgb,
    source_of,
)
from data.splits import split_by_group  # noqa: E402
from model import load_checkpoint  # noqa: E402

METRIC_COLUMNS = ("dice", "f1", "precision", "recall")
RESULT_COLUMNS = ("real_tiles", "ratio", "seed", "n_real", "n_synthetic", *METRIC_COLUMNS)
SUMMARY_COLUMNS = ("real_tiles", "ratio", "runs", *(f"{m}_{s}" for m in METRIC_COLUMNS for s in ("mean", "std")))
# The encoders of segmentation_models_pytorch downsample by 32: held-out tiles are padded to a multiple of it.
UNET_MULTIPLE = 32


@dataclass(frozen=True)
class Tile:
    """One tile: H x W x 3 uint8 image, H x W bool nucleus mask and H x W int32 instance ids (0 = background)."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    instances: np.ndarray


@dataclass(frozen=True)
class TrainSettings:
    """How each segmentation run is trained (passed on to train.py)."""

    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    encoder: str = "resnet34"
    device: str = "auto"
    num_workers: int = 2


@dataclass(frozen=True)
class DownstreamTiles:
    """The real tiles split into training and held-out ones, and the synthetic tiles that may be trained on."""

    train_real: list[Tile]
    held_out: list[Tile]
    synthetic: list[Tile]


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


def write_tile_pairs(tiles: Sequence[Tile], folder: Path) -> Path:
    """`folder` as a seg_tiles folder: images/<name>.png and masks/<name>.png (class 1 = nucleus)."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for tile in tiles:
        Image.fromarray(tile.image).save(folder / "images" / f"{tile.name}.png")
        Image.fromarray(tile.mask.astype(np.uint8)).save(folder / "masks" / f"{tile.name}.png")
    return folder


def stage_tiles(tiles: DownstreamTiles, folder: Path) -> dict[str, Path]:
    """Write the real training tiles (when any) and the usable synthetic tiles under `folder`;
    'real' / 'synthetic' -> folder."""
    staged = {"real": write_tile_pairs(tiles.train_real, folder / "real_train")} if tiles.train_real else {}
    if tiles.synthetic:
        staged["synthetic"] = write_tile_pairs(tiles.synthetic, folder / "synthetic")
    return staged


def mixture(ratio: float, staged: dict[str, Path]) -> tuple[list[Path], list[float]]:
    """The folders with a positive share of every batch at synthetic share `ratio`, and their shares."""
    shares = (("real", 1.0 - ratio), ("synthetic", ratio))
    used = [(staged[name], share) for name, share in shares if share > 0]
    return [folder for folder, _ in used], [share for _, share in used]


def train_argv(folders: Sequence[Path], shares: Sequence[float], out_dir: Path, settings: TrainSettings) -> list[str]:
    """train.py flags of one segmentation run on `folders` mixed at `shares` per batch, without validation."""
    return [
        "--model_type", "segmentation", "--dataset", "seg_tiles",
        "--datasets", ",".join(str(f) for f in folders), "--ratios", ",".join(f"{s:.12g}" for s in shares),
        "--val_fraction", "0", "--max_steps", str(settings.steps), "--batch_size", str(settings.batch_size),
        "--learning_rate", str(settings.lr), "--seed", str(settings.seed), "--seg_encoder", settings.encoder,
        "--device", settings.device, "--num_workers", str(settings.num_workers), "--out_dir", str(out_dir),
    ]


def train_model(folders: Sequence[Path], shares: Sequence[float], out_dir: Path, settings: TrainSettings) -> Path:
    """Train one segmentation run through train.py in this process; returns its last checkpoint."""
    run_dir = train.run(train_argv(folders, shares, out_dir, settings))
    return run_dir / "last.pt"


# ---------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def predict_mask(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """H x W bool nucleus mask (argmax class > 0) of one H x W x 3 uint8 image, padded to a multiple of 32 px inside."""
    height, width = image.shape[:2]
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    pad_h, pad_w = -height % UNET_MULTIPLE, -width % UNET_MULTIPLE
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    logits = model(x.to(next(model.parameters()).device))
    return (logits.argmax(1)[0, :height, :width] > 0).cpu().numpy()


def score_checkpoint(checkpoint: Path, held_out: Sequence[Tile], device: torch.device, progress: bool = True) -> dict[str, float]:
    """Dice, object F1, precision and recall of a segmentation checkpoint on each held-out tile, averaged over tiles."""
    if not held_out:
        raise ValueError("score_checkpoint: no held-out tiles")
    return score_model(load_checkpoint(checkpoint, device).model, held_out, checkpoint.parent.name, progress)


def score_model(model: nn.Module, tiles: Sequence[Tile], name: str = "", progress: bool = True) -> dict[str, float]:
    """Dice, object F1, precision and recall of a segmentation network's nucleus masks on each tile, averaged over tiles."""
    scores = []
    for tile in tqdm(tiles, desc=f"score {name}".strip(), disable=not progress, dynamic_ncols=True, leave=False):
        pred = predict_mask(model, tile.image)
        scores.append((dice_score(pred, tile.mask), *object_f1(pred, tile.instances)))
    mean = np.mean(scores, axis=0)
    return {name: float(value) for name, value in zip(METRIC_COLUMNS, mean)}


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


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as an aligned text table of `columns` (numbers with four decimals, counts as integers)."""
    def cell(value: object) -> str:
        return f"{value:>11.4f}" if isinstance(value, float) else f"{value!s:>11}"

    lines = ["  ".join(f"{c:>11}" for c in columns)]
    lines += ["  ".join(cell(row[c]) for c in columns) for row in rows]
    return "\n".join(lines)


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean and standard deviation (over seeds) of every metric per (real tiles, ratio), in the rows' order."""
    groups: dict[tuple[int, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["real_tiles"], row["ratio"]), []).append(row)
    summary = []
    for (real_tiles, ratio), members in groups.items():
        entry: dict = {"real_tiles": real_tiles, "ratio": ratio, "runs": len(members)}
        for metric in METRIC_COLUMNS:
            values = np.array([m[metric] for m in members], dtype=np.float64)
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = float(values.mean()), float(values.std())
        summary.append(entry)
    return summary


def plot_downstream(summary: Sequence[dict], path: Path) -> None:
    """Dice and object F1 against the number of real tiles, one line per synthetic ratio, with +-1 std over seeds
    (bars per ratio when there is one real-tile setting), written atomically."""
    counts = sorted({row["real_tiles"] for row in summary})
    ratios = list(dict.fromkeys(row["ratio"] for row in summary))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, sharey=True)
    for ax, key, name in ((axes[0], "dice", "nucleus Dice"), (axes[1], "f1", "object F1")):
        for index, ratio in enumerate(ratios):
            points = sorted((row["real_tiles"], row[f"{key}_mean"], row[f"{key}_std"]) for row in summary if row["ratio"] == ratio)
            x, mean, std = (np.array(v) for v in zip(*points))
            label = f"{ratio:g} synthetic"
            if len(counts) > 1:
                ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
            else:
                bar = ax.bar(index, mean, yerr=std, capsize=3, label=label)
                ax.bar_label(bar, fmt="%.2f", fontsize=7)
        if len(counts) > 1:
            ax.set_xscale("log", base=2)
            ax.set_xticks(counts, [str(c) for c in counts])
            ax.set_xlabel("real training tiles")
        else:
            ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
            ax.set_xlabel(f"share of synthetic tiles per batch ({counts[0]} real tiles)")
        ax.set_title(name)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("score on held-out real tiles")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def read_synthetic(folders: Sequence[str | os.PathLike]) -> list[Tile]:
    """The tiles of every synthetic folder; DataError when two folders hold a tile of the same name."""
    seen: dict[str, str] = {}
    tiles = []
    for folder in folders:
        for tile in read_tiled_folder(folder):
            if tile.name in seen:
                raise DataError(f"{folder}: tile {tile.name} is also in {seen[tile.name]}; synthetic tiles need distinct names")
            seen[tile.name] = str(folder)
            tiles.append(tile)
    return tiles


def split_tiles(real_dir: str | os.PathLike, synthetic_dirs: Sequence[str | os.PathLike], held_out_fraction: float, seed: int) -> DownstreamTiles:
    """Real tiles split by source image (`split_by_name`); synthetic tiles made from held-out layouts left out (`comes_from`)."""
    real = read_tiled_folder(real_dir)
    try:
        train_names, held_names = split_by_name([t.name for t in real], held_out_fraction, seed)
    except ValueError as err:
        raise ConfigError(f"--real {real_dir}: {err}") from None
    held = set(held_names)
    held_sources = {source_of(n) for n in held_names} - {source_of(n) for n in train_names}
    synthetic_all = read_synthetic(synthetic_dirs)
    synthetic = [t for t in synthetic_all if not comes_from(t.name, held, held_sources)]
    if len(synthetic) < len(synthetic_all):
        print(f"left out {len(synthetic_all) - len(synthetic)} synthetic tiles whose layouts come from held-out real tiles")
    return DownstreamTiles([t for t in real if t.name not in held], [t for t in real if t.name in held], synthetic)


def check_ratios(ratios: Sequence[float], held_out_fraction: float, synthetic_dirs: Sequence[str | os.PathLike]) -> None:
    """ConfigError unless there is at least one ratio, all in [0, 1], and synthetic folders when one is above 0."""
    if not ratios:
        raise ConfigError("--ratios: expected at least one ratio")
    bad = [r for r in ratios if not 0 <= r <= 1]
    if bad:
        raise ConfigError(f"--ratios: every ratio must be in [0, 1], got {bad}")
    if not 0 < held_out_fraction < 1:
        raise ConfigError(f"--held_out must be in (0, 1), got {held_out_fraction}")
    if any(r > 0 for r in ratios) and not synthetic_dirs:
        raise ConfigError("--synthetic: ratios above 0 need at least one folder of synthetic tiles")


def runs_folder(out: Path) -> Path:
    """Where the staged tiles and the training runs of results `out` go: <out stem>_runs/ beside it."""
    return out.with_name(f"{out.stem}_runs")


def check_outputs(out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike]) -> None:
    """Before any work: the results, summary, plot and runs folder can be written, and without `overwrite` none
    exists; with it, an existing runs folder must be one this tool wrote that holds none of the `inputs`."""
    runs = runs_folder(out)
    files = (out, summary_path(out), out.with_suffix(".png"))
    for path in files:
        check_writable_output(path, "--out", folder=False)
    check_writable_output(runs, "--out", folder=True)
    for path in (out, summary_path(out), runs):
        if path.exists() and not overwrite:
            raise ConfigError(f"--out: {path} already exists; pass --overwrite to replace it")
    if runs.exists() or runs.is_symlink():
        check_replaceable(runs, "--overwrite", keep=list(inputs))


def prepare_outputs(out: Path, overwrite: bool, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """An empty runs folder marked as this tool's (an earlier one of this tool replaced with `overwrite`)."""
    check_outputs(out, overwrite, inputs)
    runs = runs_folder(out)
    if runs.exists():
        remove_ours(runs, "--overwrite", keep=list(inputs))
    runs.mkdir(parents=True)
    mark_as_ours(runs, "tools/segmentation.py")
    return runs


def keep_real_tiles(tiles: Sequence[Tile], count: int | None, seed: int) -> list[Tile]:
    """`count` of the real training tiles drawn without replacement by `seed` (all of them for None)."""
    if count is None:
        return list(tiles)
    if count > len(tiles):
        raise ConfigError(f"--real_counts: {count} real tiles asked for, but the training split has {len(tiles)}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(tiles), size=count, replace=False))
    return [tiles[i] for i in chosen]


def summary_path(out: Path) -> Path:
    """Where the mean and spread over seeds go: <out stem>_summary.csv beside the results."""
    return out.with_name(f"{out.stem}_summary.csv")


def run_downstream(
    real_dir: str | os.PathLike,
    synthetic_dirs: Sequence[str | os.PathLike],
    ratios: Sequence[float],
    held_out_fraction: float = 0.3,
    settings: TrainSettings = TrainSettings(),
    out_csv: str | os.PathLike = "results/downstream.csv",
    overwrite: bool = False,
    progress: bool = True,
    real_counts: Sequence[int | None] = (None,),
    seeds: Sequence[int] | None = None,
) -> list[dict]:
    """For every number of real training tiles, seed and synthetic ratio, train one segmentation run on that many
    real tiles of the training split (drawn by the seed) plus synthetic tiles, and score it on the held-out real tiles.

    The held-out split is drawn by `settings.seed` and is the same for every run; a run's seed draws its real tiles,
    its batches and its initial weights. Writes `out_csv` (one row per run), <out stem>_summary.csv (mean and
    standard deviation over seeds per real-tile count and ratio), a plot with the results' name and a .png suffix,
    and the staged tiles and run folders under <out stem>_runs/ (tiles/, real_<n>_seed_<s>/ratio_<r>/).
    """
    out, ratios, seeds = Path(out_csv), list(ratios), list(seeds) if seeds is not None else [settings.seed]
    check_ratios(ratios, held_out_fraction, synthetic_dirs)
    if not seeds or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds: expected distinct seeds, got {seeds}")
    if not real_counts or any(c is not None and c < 1 for c in real_counts):
        raise ConfigError(f"--real_counts: expected positive counts, got {list(real_counts)}")
    inputs = [real_dir, *synthetic_dirs]
    check_outputs(out, overwrite, inputs)
    tiles = split_tiles(real_dir, synthetic_dirs, held_out_fraction, settings.seed)
    if any(r > 0 for r in ratios) and not tiles.synthetic:
        raise ConfigError("--synthetic: no synthetic tiles are left once those made from held-out layouts are left out")
    for count in real_counts:
        keep_real_tiles(tiles.train_real, count, seeds[0])
    print(f"real tiles: {len(tiles.train_real)} for training, {len(tiles.held_out)} held out; synthetic tiles: {len(tiles.synthetic)}")
    runs = prepare_outputs(out, overwrite, inputs)
    synthetic = stage_tiles(DownstreamTiles([], [], tiles.synthetic), runs / "tiles")
    device = pick_device(settings.device)
    rows = []
    for count in real_counts:
        for seed in seeds:
            kept = keep_real_tiles(tiles.train_real, count, seed)
            setting = f"real_{len(kept)}_seed_{seed}"
            staged = {**synthetic, "real": write_tile_pairs(kept, runs / "tiles" / setting)}
            for ratio in ratios:
                folders, shares = mixture(ratio, staged)
                checkpoint = train_model(folders, shares, runs / setting / f"ratio_{ratio:g}", replace(settings, seed=seed))
                metrics = score_checkpoint(checkpoint, tiles.held_out, device, progress)
                counts = {"n_real": len(kept) if ratio < 1 else 0, "n_synthetic": len(tiles.synthetic) if ratio > 0 else 0}
                rows.append({"real_tiles": len(kept), "ratio": ratio, "seed": seed, **counts, **metrics})
    summary = summarise(rows)
    print(format_table(rows, RESULT_COLUMNS))
    if len(seeds) > 1:
        print(format_table(summary, SUMMARY_COLUMNS))
    write_csv_atomic(out, RESULT_COLUMNS, rows)
    write_csv_atomic(summary_path(out), SUMMARY_COLUMNS, summary)
    plot_downstream(summary, out.with_suffix(".png"))
    print(f"results: {out}, {summary_path(out)}, plot: {out.with_suffix('.png')}, runs: {runs}")
    return rows


COUNT = number(int, 1)
SEED = number(int, 0)
RATIO = number(float, 0, 1)


def parse_counts(text: str | None) -> list[int | None]:
    """'8,16,32' -> [8, 16, 32]; None or 'all' -> [None] (every real training tile)."""
    if text is None or text.strip().lower() == "all":
        return [None]
    try:
        return [None if part.strip().lower() == "all" else COUNT(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--real_counts: expected comma-separated counts >= 1 (or all), got {text!r}") from None


def parse_seeds(text: str | None, default: int) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; None -> [default]."""
    if text is None:
        return [default]
    try:
        return [SEED(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers >= 0, got {text!r}") from None


def parse_ratios(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]."""
    try:
        return [RATIO(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--ratios: expected comma-separated numbers in [0, 1], got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of the downstream check."""
    p = Parser(description="Train the segmentation model on real plus synthetic tiles and score it on held-out real tiles.")
    p.add_argument("--real", required=True, help="tiled folder of real tiles (images/, bin_masks/ or labels/, inst_masks/)")
    p.add_argument("--synthetic", nargs="+", default=[], help="tiled folders of generated tiles (labels/ or bin_masks/)")
    p.add_argument("--ratios", default="0,0.5", help="shares of synthetic tiles per batch, one model each (default 0,0.5)")
    p.add_argument("--steps", type=number(int, 1), default=300, help="training steps per model (default 300)")
    p.add_argument("--batch_size", type=number(int, 1), default=8, help="batch size (default 8)")
    p.add_argument("--lr", type=number(float, 0, low_open=True), default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the held-out split and, without --seeds, of the batches and the weights (default 0)")
    p.add_argument("--real_counts", help="numbers of real training tiles to train with, e.g. 8,16,32 (each drawn by the run's seed; default all)")
    p.add_argument("--seeds", help="repeat every setting with these seeds (real tiles drawn, batches, weights), e.g. 0,1,2; the results give mean and spread")
    p.add_argument("--held_out", type=number(float, 0, 1, low_open=True, high_open=True), default=0.3, help="share of real source images held out for scoring (default 0.3)")
    p.add_argument("--seg_encoder", default="resnet34", help="segmentation_models_pytorch encoder of the UNet (default resnet34)")
    p.add_argument("--num_workers", type=number(int, 0), default=2, help="data-loading worker processes of each run (default 2)")
    p.add_argument("--out", default="results/downstream.csv", help="results CSV; the plot goes next to it (.png), the runs into <stem>_runs/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file and its runs folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def run(argv: Sequence[str] | None = None) -> list[dict]:
    """Parse the flags and run the downstream check."""
    args = build_parser().parse_args(argv)
    settings = TrainSettings(args.steps, args.batch_size, args.lr, args.seed, args.seg_encoder, args.device, args.num_workers)
    return run_downstream(args.real, args.synthetic, parse_ratios(args.ratios), args.held_out, settings, args.out, args.overwrite,
                          real_counts=parse_counts(args.real_counts), seeds=parse_seeds(args.seeds, args.seed))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 2 with a message on bad input."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
