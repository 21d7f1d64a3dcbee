"""Metrics of generated against real images: loading image sets, pairing them, and each metric's computation.

Also the colour-based style distance of STEDM output folders (see metrics/style_distance.py), which needs no real set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from common.errors import CheckpointError, ConfigError, DataError
from common.files import read_csv_rows, save_figure_atomic, write_csv_atomic
from data.npy_stack import TileStack
from diffusion.lpips import LPIPS
from metrics.distribution import fid, kid, kid_subset_size, precision_recall
from metrics.features import (
    ClassifierFeatures,
    EfficientNetLite0Features,
    InceptionFeatures,
    extract,
)
from metrics.structural import SSIMConvention, paired_scores, unpaired_scores
from metrics.style_distance import StyleRow, read_style_distances, summarize
from model import MODEL_TYPES, load_checkpoint, load_ensemble, recipe_for
from recipes.base import LoadedModel
from recipes.classifier import Classifier
from recipes.transitions import RISE_TOLERANCE, spearman
from tools.segmentation import read_tiled_folder, score_model

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
METRICS = ("ssim", "ms_ssim", "lpips", "fid", "kid", "pr", "nll", "controllability", "style_distance", "layout_dice")
# Each preset: the SSIM/MS-SSIM convention, and whether generated images of another size are resized to the real size.
METRIC_PRESETS = {
    "default": (SSIMConvention(), False),
    "kpc": (SSIMConvention("kpc", window=3, gaussian=False, sample_covariance=True, ms_ssim="torchmetrics"), True),
}
RESIZE_MODE = "bilinear"
NLL_CONDITIONS = ("null", "true")
STYLE_CSV = "style_distance.csv"
STYLE_PLOT = "style_distance.png"
STYLE_COLUMNS = ("file", "layout_unit", "style_units", "d_style", "d_layout", "same_source")


@dataclass
class ImageSet:
    """Images in [-1, 1] (N, 3, H, W) with a name each (relative path without suffix, or tile name)."""

    images: torch.Tensor
    names: list[str]
    source: str


def read_image(path: Path, size: int | None) -> torch.Tensor:
    try:
        image = Image.open(path).convert("RGB")
    except OSError as err:
        raise DataError(f"{path} is not a readable image ({err})") from None
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def load_images(source: str | Path, size: int | None = None, limit: int | None = None, flag: str = "--real") -> ImageSet:
    """A folder of images (searched recursively) or a .npy tile stack (every tile)."""
    path = Path(source)
    if path.suffix == ".npy":
        stack = TileStack(path, "all", test_size=0)
        count = len(stack) if limit is None else min(limit, len(stack))
        images = torch.stack([stack[i]["image"] for i in range(count)])
        if size is not None and images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
        return ImageSet(images, [stack[i]["meta"]["name"] for i in range(count)], str(path))
    if not path.is_dir():
        raise DataError(f"{flag} {path}: expected a folder of images or a .npy tile stack")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{flag} {path}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    files = files[:limit] if limit else files
    images = [read_image(f, size) for f in tqdm(files, desc=f"reading {path.name}", leave=False)]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(f"{flag} {path}: images of different sizes {sorted(shapes)[:3]}; pass --image_size to resize")
    return ImageSet(torch.stack(images), [str(f.relative_to(path).with_suffix("")) for f in files], str(path))


def pair_by_name(real: ImageSet, fake: ImageSet) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Real and fake images with the same names, in the same order, or None when the names do not match."""
    index = {name: i for i, name in enumerate(real.names)}
    common = [(index[n], i) for i, n in enumerate(fake.names) if n in index]
    if not common or len(common) < len(fake.names):
        return None
    r, f = zip(*common)
    return real.images[list(r)], fake.images[list(f)]


def ssim_convention(preset: str, window: int | None, gaussian: bool | None,
                    sample_covariance: bool | None) -> SSIMConvention:
    """The preset's SSIM convention with the --ssim_* flags that were given put over it (an explicit flag wins)."""
    if preset not in METRIC_PRESETS:
        raise ConfigError(f"--metric_preset: expected one of {', '.join(METRIC_PRESETS)}, got {preset!r}")
    given = {"window": window, "gaussian": gaussian, "sample_covariance": sample_covariance}
    return replace(METRIC_PRESETS[preset][0], **{k: v for k, v in given.items() if v is not None})


def match_sizes(real: ImageSet, fake: ImageSet, preset: str) -> tuple[ImageSet, dict[str, str]]:
    """The generated set at the real images' size: resized bilinearly where the preset says so (with the result
    field saying so), else a DataError when the sizes differ."""
    real_size, fake_size = tuple(real.images.shape[-2:]), tuple(fake.images.shape[-2:])
    if real_size == fake_size:
        return fake, {}
    if not METRIC_PRESETS[preset][1]:
        raise DataError(f"--real images are {real_size[0]}x{real_size[1]} px and --fake {fake_size[0]}x{fake_size[1]} px; "
                        f"pass --image_size (or --metric_preset kpc, which resizes --fake to the real size)")
    images = F.interpolate(fake.images, size=real_size, mode=RESIZE_MODE, align_corners=False, antialias=False)
    note = f"{RESIZE_MODE} (align_corners=False, no antialiasing) from {fake_size[0]}x{fake_size[1]} to {real_size[0]}x{real_size[1]}"
    return ImageSet(images.clamp(-1, 1), fake.names, fake.source), {"fake_resized": note}


def structural_metrics(real: ImageSet, fake: ImageSet, names: Sequence[str], paired: str, pairs: int, seed: int,
                       batch: int, device: torch.device, lpips: LPIPS | None,
                       convention: SSIMConvention = SSIMConvention()) -> tuple[dict[str, float], bool]:
    """SSIM, MS-SSIM and LPIPS; paired by file name when the names match (or when --paired yes), else random pairs."""
    matched = pair_by_name(real, fake) if paired != "no" else None
    if paired == "yes" and matched is None:
        raise DataError(f"--paired yes: the file names of {fake.source} are not all found in {real.source}")
    fns = {"ssim": convention.ssim_fn(), "ms_ssim": convention.ms_ssim_fn()}
    if lpips is not None:
        lpips = lpips.to(device)
        fns["lpips"] = lambda x, y: lpips(x, y)
    out: dict[str, float] = {}
    for name in names:
        total = len(matched[0]) if matched is not None else pairs
        with tqdm(total=total, desc=f"{name}, {'pairs by file name' if matched is not None else 'random pairs'}", unit="pair") as bar:
            on_device = counted(lambda x, y, fn=fns[name]: fn(x.to(device), y.to(device)).float().cpu(), bar)
            if matched is not None:
                scores = paired_scores(matched[0], matched[1], on_device, batch_size=batch)
            else:
                scores = unpaired_scores(real.images, fake.images, on_device, pairs=pairs, seed=seed, batch_size=batch)
        out[name] = float(torch.as_tensor(scores).float().mean())
    return out, matched is not None


def counted(fn, bar: tqdm):
    """`fn(x, y)` that also moves the progress bar `bar` on by the pairs in the batch."""

    def call(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        result = fn(x, y)
        bar.update(len(x))
        return result

    return call


def progress_batches(images: torch.Tensor, batch: int, desc: str) -> Iterator[torch.Tensor]:
    """`images` in batches of `batch`, with a progress bar (images done, time left) labelled `desc`."""
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch]
            yield chunk
            bar.update(len(chunk))


def lpips_network(backbone: str, weights: str | None, linear: str | None) -> LPIPS:
    """The LPIPS distance from local weight files; a file that does not fit is a CheckpointError naming it."""
    try:
        return LPIPS(backbone, weights, linear)
    except (ValueError, FileNotFoundError) as err:
        given = f"--lpips_weights {weights}" + (f", --lpips_linear {linear}" if linear else "")
        raise CheckpointError(f"{given}: expected local {backbone} LPIPS state dicts ({err})") from None


def load_flag_checkpoint(path: str | Path, flag: str, device: torch.device, accepted: Sequence[str],
                         expected: str) -> LoadedModel:
    """The checkpoint given as `flag`, refused (naming the flag, the file and `expected`) when it cannot be read or
    holds a model type outside `accepted`."""
    try:
        loaded = load_checkpoint(path, device)
    except CheckpointError as err:
        raise CheckpointError(f"{flag} {path}: expected {expected} ({err})") from None
    if loaded.model_type not in accepted:
        raise CheckpointError(f"{flag} {path} holds a {loaded.model_type} model; expected {expected}")
    return loaded


def classifier_types() -> tuple[str, ...]:
    """The --model_type values whose checkpoints are classifiers."""
    return tuple(name for name in MODEL_TYPES if isinstance(recipe_for(name), Classifier))


def feature_network(inception_weights: str | None, classifier_ckpt: str | None, device: torch.device):
    if inception_weights and classifier_ckpt:
        raise ConfigError("--inception_weights and --features contradict each other: give one feature network")
    if inception_weights:
        return InceptionFeatures(inception_weights)
    if classifier_ckpt:
        kinds = classifier_types()
        loaded = load_flag_checkpoint(classifier_ckpt, "--features", device, kinds,
                                      f"a classifier checkpoint ({', '.join(kinds)}) of train.py")
        return ClassifierFeatures(loaded.model)
    return EfficientNetLite0Features()


def distribution_metrics(real: ImageSet, fake: ImageSet, names: Sequence[str], network, batch: int, device: torch.device,
                         seed: int) -> dict[str, Any]:
    """FID, KID and precision/recall on the features of `network` (labelled as not comparable with published FID)."""
    network = network.to(device) if hasattr(network, "to") else network
    fr = extract(network, progress_batches(real.images, batch, f"{network.name} features of --real"), device)
    ff = extract(network, progress_batches(fake.images, batch, f"{network.name} features of --fake"), device)
    out: dict[str, Any] = {"feature_network": network.name, "comparable_with_published_fid": bool(network.comparable_with_published)}
    if "fid" in names:
        out["fid"] = float(fid(fr, ff))
    if "kid" in names:
        mean, std = kid(fr, ff, seed=seed)
        out["kid"], out["kid_std"] = float(mean), float(std)
        out["kid_subsets"], out["kid_subset_size"] = 100, kid_subset_size(len(fr), len(ff), 1000)
    if "pr" in names:
        p, r = precision_recall(fr, ff)
        out["precision"], out["recall"] = float(p), float(r)
    return out


def nll_bits_per_dim(ckpt: str, real: ImageSet, count: int, batch: int, device: torch.device,
                     condition: str = "null", condition_csv: str | None = None) -> dict[str, Any]:
    """Variational bound of a pixel-space diffusion checkpoint on the first `count` real images, in bits/dim:
    with the null condition (`null`, the model's unconditional bound) or each image's true condition (`true`)."""
    loaded = load_flag_checkpoint(ckpt, "--nll_ckpt", device, ("diffusion",),
                                  "an unconditional or class-conditional pixel diffusion checkpoint")
    unet = loaded.model_config["unet"]
    size = unet["image_size"]
    images = real.images[:count]
    if images.shape[-1] != size:
        raise DataError(f"--nll_ckpt expects {size} px images; {real.source} has {images.shape[-1]} px (use --image_size {size})")
    conditions = list(unet["conditions"])
    values = None
    if condition == "true":
        values = true_conditions(condition_csv, real.names[:count], conditions, unet.get("num_labels", 0), ckpt)
    diffusion = loaded.diffusion
    totals = []
    for index, x0 in enumerate(progress_batches(images, batch, f"NLL images ({diffusion.num_timesteps} steps each)")):
        i = index * batch
        x0 = x0.to(device)
        drop = torch.full((len(x0),), values is None, dtype=torch.bool, device=device)
        cond = None if values is None else {conditions[0]: values[i : i + batch].to(device)}
        model_fn = lambda x, t: loaded.model(x, t, cond, drop) if conditions else loaded.model(x, t)
        totals.append(diffusion.variational_bound(model_fn, x0, progress=True)["total_bpd"].cpu())
    bpd = torch.cat(totals)
    used = condition if conditions else "unconditional model"
    return {"nll_bpd": float(bpd.mean()), "nll_bpd_std": float(bpd.std()) if len(bpd) > 1 else 0.0,
            "nll_images": len(bpd), "nll_condition": used}


def true_conditions(csv_path: str | None, names: Sequence[str], conditions: Sequence[str], num_labels: int,
                    ckpt: str) -> torch.Tensor:
    """The condition of each named real image from a file,condition CSV, as the model's one vector condition takes it."""
    if list(conditions) not in (["label"], ["score"]):
        what = "an unconditional model" if not conditions else f"a model conditioned on {', '.join(conditions)}"
        raise ConfigError(f"--nll_condition true: --nll_ckpt {ckpt} is {what}; true conditions are read for one "
                          f"label or score condition only")
    if not csv_path:
        raise ConfigError("--nll_condition true needs --nll_condition_csv CSV with file,condition of every --real image")
    path = Path(csv_path)
    rows = read_csv_rows(path, ("file", "condition"), "--nll_condition_csv")
    by_name: dict[str, tuple[str, int]] = {}
    for line, row in enumerate(rows, start=2):
        name = _image_name(row["file"] or "")
        if name in by_name:
            raise DataError(f"--nll_condition_csv {path}, line {line}: image {row['file']!r} is also on line "
                            f"{by_name[name][1]}; expected one condition per image")
        by_name[name] = (row["condition"], line)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(f"--nll_condition_csv {path}: no condition for {len(missing)} image(s), e.g. {missing[:3]}")
    parse = _label if conditions[0] == "label" else _score
    return torch.tensor([parse(*by_name[n], path, num_labels) for n in names])


def _image_name(file: str) -> str:
    """A CSV file entry as an ImageSet name: the path without an image suffix."""
    path = Path(file)
    return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_SUFFIXES else str(path)


def _label(text: str, line: int, path: Path, num_labels: int) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value < num_labels:
        raise DataError(f"--nll_condition_csv {path}, line {line}: condition {text!r} is not a class id in 0..{num_labels - 1}")
    return value


def _score(text: str, line: int, path: Path, num_labels: int) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise DataError(f"--nll_condition_csv {path}, line {line}: score {text!r} is not in [0, 1]")
    return value


@dataclass
class Targets:
    """The generated images of a --targets CSV (resolved inside its folder), their target conditions and rows."""

    files: list[Path]
    conditions: np.ndarray
    rows: list[dict[str, str]]


def read_targets(targets_csv: str | Path) -> Targets:
    """A file,condition CSV whose files lie in (or below) its own folder; DataError naming the line otherwise."""
    path = Path(targets_csv)
    rows = read_csv_rows(path, ("file", "condition"), "--targets")
    if not rows:
        raise DataError(f"--targets {path}: no rows (expected file,condition as in inference.py's scores.csv)")
    files = [target_file(path, line, row.get("file")) for line, row in enumerate(rows, start=2)]
    first_line: dict[Path, int] = {}
    for line, file in enumerate(files, start=2):
        if file in first_line:
            raise DataError(f"--targets {path}, line {line}: file {rows[line - 2]['file']!r} is also on line "
                            f"{first_line[file]}; expected each generated image once")
        first_line[file] = line
    conditions = np.array([_condition(row.get("condition"), path, line) for line, row in enumerate(rows, start=2)])
    return Targets(files, conditions, rows)


def target_file(csv_path: Path, line: int, entry: str | None) -> Path:
    """The image a --targets `file` entry names, relative to the CSV's folder; absolute paths and paths that
    leave that folder are refused."""
    where = f"--targets {csv_path}, line {line}"
    text = (entry or "").strip()
    if not text:
        raise DataError(f"{where}: no file (expected an image path relative to the CSV's folder)")
    if Path(text).is_absolute():
        raise DataError(f"{where}: file {text!r} is an absolute path; expected a path relative to the CSV's folder "
                        f"{csv_path.parent}")
    relative = Path(os.path.normpath(text))
    if relative.parts and relative.parts[0] == "..":
        raise DataError(f"{where}: file {text!r} leaves the CSV's folder {csv_path.parent}; expected a path inside it")
    file = csv_path.parent / relative
    if not file.is_file():
        raise DataError(f"{where}: file {text!r} does not exist in {csv_path.parent}")
    return file


def controllability(targets_csv: str | Path | Targets, classifier_ckpts: list[str], batch: int,
                    device: torch.device) -> dict[str, float]:
    """Spearman correlation and AUC (target >= 0.5 as positive) of the ensemble's score against the target condition."""
    targets = targets_csv if isinstance(targets_csv, Targets) else read_targets(targets_csv)
    rows, target = targets.rows, targets.conditions
    images = torch.stack([read_image(file, None) for file in targets.files])
    ensemble = classifier_ensemble(classifier_ckpts, device)
    with torch.no_grad():
        scores = torch.cat([ensemble(chunk.to(device)).cpu()
                            for chunk in progress_batches(images, batch, "controllability scoring")]).numpy()
    positive = target >= 0.5
    auc = float(roc_auc_score(positive, scores)) if 0 < positive.sum() < len(positive) else float("nan")
    result = {"controllability_spearman": spearman(target, scores), "controllability_auc": auc,
              "controllability_images": len(rows)}
    if "sequence" in rows[0]:
        result["controllability_rising_share"] = rising_sequences([r["sequence"] for r in rows], target, scores)
        result["controllability_rise_tolerance"] = RISE_TOLERANCE
    return result


def classifier_ensemble(paths: Sequence[str], device: torch.device):
    """The --classifier_ckpts ensemble; a checkpoint that cannot be read is refused naming the flag."""
    try:
        return load_ensemble(paths, device)[0]
    except CheckpointError as err:
        if str(err).startswith("--classifier_ckpts"):
            raise
        raise CheckpointError(f"--classifier_ckpts: expected classifier checkpoints of train.py ({err})") from None


def rising_sequences(sequences: Sequence[str], target: np.ndarray, scores: np.ndarray,
                     tolerance: float = RISE_TOLERANCE) -> float:
    """Share of sequences whose score, ordered by target condition, never falls by more than `tolerance`."""
    rising = []
    for sequence in dict.fromkeys(sequences):
        members = np.array([s == sequence for s in sequences])
        order = np.argsort(target[members], kind="stable")
        rising.append(bool((np.diff(scores[members][order]) >= -tolerance).all()))
    return float(np.mean(rising))


def layout_adherence(folder: str, segmenter: str, device: torch.device) -> dict[str, Any]:
    """How closely generated tiles follow their layouts: a nucleus segmentation checkpoint trained on real tiles
    segments each generated tile of `folder` (images/ with labels/ or bin_masks/, as inference.py writes for sdm),
    scored against the tile's own layout (Dice of the nucleus masks and object F1 at IoU 0.5, means over tiles)."""
    path = Path(segmenter)
    if not path.is_file():
        raise ConfigError(f"--segmenter {path}: no such checkpoint (a --model_type segmentation run's best.pt or last.pt)")
    loaded = load_flag_checkpoint(path, "--segmenter", device, ("segmentation",),
                                  "a segmentation checkpoint (layout_dice needs one)")
    tiles = read_tiled_folder(folder)
    if not tiles:
        raise DataError(f"--fake {folder}: no generated tiles with layouts (expected images/ and labels/ or bin_masks/)")
    scores = score_model(loaded.model.eval(), tiles, "layout_dice")
    return {"layout_dice": scores["dice"], "layout_object_f1": scores["f1"], "layout_precision": scores["precision"],
            "layout_recall": scores["recall"], "layout_tiles": len(tiles), "segmenter": str(path)}


def _condition(text: str | None, path: Path, line: int) -> float:
    if text is None or not text.strip():
        raise DataError(f"--targets {path}, line {line}: no condition (expected file,condition with a number)")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise DataError(f"--targets {path}, line {line}: condition {text!r} is not a finite number")
    return value


def style_distance(folder: str, limit: int | None) -> tuple[dict[str, Any], list[StyleRow]]:
    """Summary numbers and per-tile rows of the style distance of a STEDM output folder."""
    rows = read_style_distances(folder, limit)
    return summarize(rows), rows


def style_outputs(out: Path) -> tuple[Path, Path]:
    """The per-tile CSV and the scatter plot written beside the results JSON `out`."""
    return out.parent / STYLE_CSV, out.parent / STYLE_PLOT


def write_style_outputs(rows: Sequence[StyleRow], out: Path) -> None:
    """Write the per-tile CSV and the d_layout-against-d_style scatter plot beside `out`."""
    csv_path, plot_path = style_outputs(out)
    write_csv_atomic(csv_path, STYLE_COLUMNS, [_style_record(r) for r in rows])
    style_scatter(rows, plot_path)


def _style_record(row: StyleRow) -> dict[str, Any]:
    """One row of the per-tile CSV (d_layout empty where the tile has no layout patch)."""
    return {"file": row.file, "layout_unit": row.layout_unit, "style_units": ";".join(row.style_units),
            "d_style": f"{row.d_style:.4f}", "d_layout": "" if row.d_layout is None else f"{row.d_layout:.4f}",
            "same_source": int(row.same_source)}


def style_scatter(rows: Sequence[StyleRow], path: Path) -> None:
    """Scatter of d_style against d_layout per tile with the diagonal; points below it are closer to their style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5.8), dpi=120)
    layout = [r for r in rows if r.d_layout is not None]
    for same, label, colour in ((False, "style from another unit", "C0"), (True, "same-source (excluded)", "0.6")):
        chosen = [r for r in layout if r.same_source == same]
        ax.scatter([r.d_layout for r in chosen], [r.d_style for r in chosen], s=12, color=colour, label=f"{label} ({len(chosen)})")
    top = max([1.0] + [max(r.d_style, r.d_layout) for r in layout]) * 1.05
    ax.plot([0, top], [0, top], linestyle="--", color="0.4", linewidth=0.8, label="d_style = d_layout (below: closer to style)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("d_layout: ΔE76 to the real layout patch")
    ax.set_ylabel("d_style: ΔE76 to the style crops")
    ax.set_title("STEDM style adherence (mean CIELAB per tile)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, frameon=False)
    fig.tight_layout()
    try:
        save_figure_atomic(fig, path)
    finally:
        plt.close(fig)
