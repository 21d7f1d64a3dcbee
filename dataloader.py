"""build_dataloaders(config) -> DataBundle: data set name -> dataset objects -> DataLoaders (DDP-aware, resumable).

Four families: WSI patches around annotations, MoNuSeg-style layout tiles, tile stacks (.npy), PatchCamelyon.
The data options (patches, each family's flags, clusters) and their checks live here too.

Run as a script, `python dataloader.py --summary FILE` prints a JSON summary of an annotation file.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from common.cli import Parser, run_main
from common.errors import ConfigError
from common.files import read_csv_rows
from common.options import Option, flag_bool, number, number_list, str_list
from data.annotations import DEFAULT_SOFT_THRESHOLDS, SOFT_MODES, Annotation, ClassMap, DataError, check_soft_thresholds
from data.condition_maps import MapOptions, map_settings
from data.families import LAYOUT_DATASETS, PCAM_DATASETS, REGION_DATASETS, SEGMENTATION_DATASETS, TILE_DATASETS
from data.meningioma import read_meningioma
from data.midog import midog_summary, read_midog_json
from data.monuseg import (
    LayoutPatches,
    is_tiled_folder,
    list_tiles,
    split_names,
    tile_monuseg,
)
from data.npy_stack import (
    TileStack,
    labels_from_csv,
    open_stack,
    tiles_from_slides,
    write_stack,
)
from data.pcam import (
    PCamH5,
    PCamKaggle,
    is_pcam_h5,
    is_pcam_kaggle,
    kaggle_split,
    read_kaggle_labels,
)
from data.flowers import Flowers, open_flowers
from data.tile_styles import TileStyles, mask_classes
from data.region_patches import RegionPatches, RegionSlides, open_region_slides, open_wsi_regions, slide_classes, tissue_positions, with_labelled
from data.sliderunner import read_sliderunner, sliderunner_summary
from data.splits import share_of, tail_split
from data.synthetic import generate_synthetic_dataset, synthetic_paths
from data.tile_pairs import MixedTilePairs, TilePairs, list_pairs, split_pairs, tile_size_of
from data.synthetic_monuseg import generate_synthetic_monuseg
from data.synthetic_pcam import make_fake_pcam_h5
from data.synthetic_regions import CLASS_MAP as REGIONS_CLASS_MAP
from data.synthetic_regions import generate_synthetic_regions, regions_paths
from data.style_sampling import STYLE_MODES
from data.wsi import (
    SCALINGS,
    SOFT_SAMPLINGS,
    SPLITS,
    ColorJitter,
    PatchOptions,
    StreamSampler,
    WSIEvalPatches,
    WSITrainPatches,
    check_tile_fits,
    resolve_slides,
    slide_dimensions,
    split_annotations,
)

O = Option
DATA_OPTIONS: tuple[Option, ...] = (
    # patches
    O("tile_size", number(int, 8), 64, "patch size in pixels (level 0 of a slide, or the tiles cut from layout images)", None, "patches"),
    O("val_fraction", number(float, 0, 1, high_open=True), 0.2, "validation share: of each slide's annotations by y (the y-percentile splits cut at the (1 - this) quantile), of the layout images, or of a stack's training tiles", None, "patches"),
    O("augment", flag_bool, True, "random 90-degree rotations and flips", None, "patches"),
    # WSI data
    O("slides_dir", str, None, "folder of whole-slide images (default: the data set's layout)", None, "slides"),
    O("annotation_file", str, None, "SlideRunner .sqlite (spots, or region polygons for --dataset regions), MIDOG .json or meningioma folder", None, "slides"),
    O("split_file", str, None, "CSV with columns slide,split: train/val for --split slides (with a y-percentile split: only its train slides take part, the rest are held out), train/heldout for --dataset regions", None, "slides"),
    O("mitotic_classes", str_list, None, "class names counted as mitotic (comma-separated)", None, "wsi data"),
    O("negative_classes", str_list, None, "class names used as negatives, or all (every class that is not mitotic; default: the data set's)", None, "wsi data"),
    O("tumor_types", str_list, None, "MIDOG: keep only these tumour types", None, "wsi data"),
    O("annotators", str_list, None, "voters whose votes make the soft labels: SlideRunner person names or ids (e.g. 1,2), MIDOG JSON vote positions (1-3; default: everyone)", None, "wsi data"),
    O("indeterminate", str, "negative", "meningioma: what INDET spots are", ("negative", "mitotic", "skip"), "wsi data"),
    O("split", str, None, "train/val split: slides (CSV), y_percentile (per slide, the (1 - val_fraction) y quantile of all annotations) or y_percentile_positive (of the mitotic ones, as the transition work did; default: slides when a split file exists)", SPLITS, "wsi data"),
    O("mite_ratio", number(float, 0, 1), 0.5, "fraction of mitotic patches in each training batch", None, "wsi data"),
    O("soft_vs_hard", str, "hard", "labels: hard (agreed class) or soft (share of mitotic votes)", ("soft", "hard"), "wsi data"),
    O("soft_mode", str, "binned", "soft labels from the share of mitotic votes: binned (0 none, 0.5 some, 1 all), thresholds (--soft_thresholds, as the transition work did) or continuous", SOFT_MODES, "wsi data"),
    O("soft_thresholds", number_list(float), list(DEFAULT_SOFT_THRESHOLDS), "--soft_mode thresholds: low,high; share < low -> 0, low <= share <= high -> 0.5, share > high -> 1", None, "wsi data"),
    O("soft_sampling", str, "hard_label", "training draws: hard_label (mitotic vs negative at --mite_ratio) or uniform_bins (each score bin 0 / 0.5 / 1 equally likely, then an annotation in it, as the transition work did)", SOFT_SAMPLINGS, "wsi data"),
    O("max_offset", number(int, 0), 0, "random shift of the patch centre, in pixels", None, "wsi data"),
    O("scaling", str, "minmax", "pixel scaling to [-1, 1]: minmax, per-image 99th percentile clipped at 1, or unclipped as the transition work did", SCALINGS, "wsi data"),
    # layout data
    O("stride", number(int, 1), None, "stride of the tiling of layout images (default: --tile_size)", None, "layout data"),
    O("min_area", number(int, 0), 30, "nuclei fragments smaller than this many pixels are dropped", None, "layout data"),
    O("num_classes", number(int, 2), 2, "semantic classes incl. background (2: nucleus vs background)", None, "layout data"),
    O("no_instance", flag_bool, False, "leave out the instance-edge map", None, "layout data"),
    O("use_hv_map", flag_bool, False, "add HoVer-Net horizontal/vertical distance maps (2 channels)", None, "layout data"),
    O("use_col_map", flag_bool, False, "add the colour map: each nucleus filled with its mean colour (3 channels)", None, "layout data"),
    O("cluster_id", number(int, 0), None, "the cluster of --cluster_file to train on", None, "layout data"),
    # tile stacks
    O("stack_slice", number(int, 0), 0, "which slice S of an (N, S, H, W, 3) stack", None, "tile data"),
    O("test_size", number(int, 0), 1000, "the last N tiles of the stack are the held-out test split", None, "tile data"),
    # PatchCamelyon
    O("pcam_crop", number(int, 1), None, "centre crop of the 96 px PatchCamelyon patches (32 in the PCam DDPM work)", None, "pcam data"),
    O("class_filter", number(int, 0, 1), None, "train on one PatchCamelyon class only (0 non-cancerous, 1 cancerous)", None, "pcam data"),
    # segmentation tile pairs
    O("datasets", str_list, None, "seg_tiles: folders of images/*.png + masks/*.png, comma-separated (default --data_root)", None, "segmentation data"),
    O("ratios", number_list(float, 0, min_items=1), None, "seg_tiles: share of every training batch from each --datasets folder, e.g. 0.2,0.8 (default equal)", None, "segmentation data"),
    O("stain_augment", flag_bool, False, "seg_tiles: seeded HED stain jitter of the training tiles", None, "segmentation data"),
    # region data
    O("class_map", str, None, "region classes to labels, e.g. stroma:1,tumor:2 (background 0; default: the data set's)", None, "region data"),
    O("num_style_images", number(int, 0), 2, "style reference crops per patch", None, "region data"),
    O("style_sampling", str, "multi_patch", "where style crops come from: near the patch on its slide, random tissue of its slide, strong affine transforms of the patch, or nowhere", STYLE_MODES, "region data"),
    O("patches_per_slide", number(int, 1), 64, "seeded patch positions with tissue per training slide", None, "region data"),
    O("level", number(int, 0), None, "pyramid level the region slides are read at (default 0)", None, "region data"),
    O("mpp", number(float, 0, low_open=True), None, "read each region slide at the level whose microns per pixel are nearest this (instead of --level)", None, "region data"),
    O("labelled_per_class", number(int, 1), None, "keep the layouts of only N seeded training units per class (slides: the split file's class column; flowers: the species); the rest serve as styles only", None, "region data"),
    # clusters
    O("cluster_file", str, None, "cluster CSV: sdm trains on --cluster_id of tools.cluster's tiles; ldm takes every tile's cluster as its label", None, "clusters"),
)


def check_data_options(config: dict[str, Any]) -> None:
    """Defaults and checks that depend on other options (ConfigError); the option table checks each one's range."""
    if config["stride"] is None:
        config["stride"] = config["tile_size"]
    check_soft_options(config)
    if config["split"] == "slides" and config["split_file"] is None and config["dataset"] != "synthetic":
        raise ConfigError("--split slides needs --split_file CSV (columns slide,split)")
    if config["level"] is not None and config["mpp"] is not None:
        raise ConfigError("--level and --mpp both choose the pyramid level: give one of them")
    if config["dataset"] == "regions":
        missing = [f"--{n}" for n in ("slides_dir", "annotation_file", "class_map") if not config[n]]
        if missing:
            raise ConfigError(f"--dataset regions needs {', '.join(missing)} (slides, their SlideRunner polygons, and class names to labels)")
    if config["cluster_id"] is not None and not config["cluster_file"]:
        raise ConfigError("--cluster_id needs --cluster_file")
    if config["dataset"] in SEGMENTATION_DATASETS:
        config["ratios"] = segmentation_ratios(config)
    elif config.get("datasets") or config.get("ratios"):
        raise ConfigError(f"--datasets and --ratios are for --dataset {' or '.join(SEGMENTATION_DATASETS)}, not {config['dataset']}")


def check_soft_options(config: dict[str, Any]) -> None:
    """--soft_thresholds, --soft_sampling and --mite_ratio together (ConfigError); the thresholds become a pair."""
    explicit = set(config.get("explicit", ()))
    try:
        config["soft_thresholds"] = list(check_soft_thresholds(config["soft_thresholds"]))
    except DataError as err:
        raise ConfigError(str(err)) from None
    if "soft_thresholds" in explicit and config["soft_mode"] != "thresholds":
        raise ConfigError(f"--soft_thresholds is for --soft_mode thresholds, not {config['soft_mode']}")
    if config["soft_sampling"] == "uniform_bins":
        if config["soft_vs_hard"] == "soft" and config["soft_mode"] == "continuous":
            raise ConfigError("--soft_sampling uniform_bins draws the score bins 0 / 0.5 / 1: use --soft_mode binned or thresholds, not continuous")
        if "mite_ratio" in explicit:
            raise ConfigError("--mite_ratio and --soft_sampling uniform_bins contradict each other: uniform_bins draws each score bin equally often")


def segmentation_folders(config: dict[str, Any]) -> list[Path]:
    """The --datasets folders of a segmentation data set (--data_root, or data/<dataset>, without them)."""
    if config.get("datasets"):
        return [Path(d) for d in config["datasets"]]
    return [Path(config["data_root"] or Path("data") / config["dataset"])]


def segmentation_ratios(config: dict[str, Any]) -> list[float]:
    """--ratios as numbers, one per --datasets folder, non-negative and summing to 1 (equal shares by default)."""
    count = len(segmentation_folders(config))
    raw = config.get("ratios")
    if not raw:
        return [1.0 / count] * count
    ratios = [float(r) for r in raw]
    if len(ratios) != count:
        raise ConfigError(f"--ratios has {len(ratios)} values but --datasets names {count} folder(s); give one share per folder")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"--ratios must be non-negative shares summing to 1, got {','.join(map(str, raw))}")
    return ratios


@dataclass(frozen=True)
class Layout:
    """Where a data set keeps its slides and annotations inside --data_root, and its class names."""

    slides: str
    annotations: str
    mitotic: tuple[str, ...]
    negative: tuple[str, ...] | None
    split_file: str | None = None


LAYOUTS: dict[str, Layout] = {
    "canine": Layout("WSI", "Annotations/MITOS_WSI_CCMCT_ODAEL.sqlite", ("Mitotic figure",), ("Mitotic figure lookalike",)),
    "midog": Layout("images", "MIDOG++.json", ("mitotic figure",), ("not mitotic figure",)),
    "meningioma": Layout("WSI", "Annotations", ("mitotic figure",), None),
    "synthetic": Layout("WSI", "Annotations/synthetic.sqlite", ("Mitotic figure",), ("Mitotic figure lookalike",), "splits.csv"),
}


@dataclass
class Datasets:
    """A data set's training items (finite, or an endless stream of its own), validation set, tile size and
    number of class / cluster labels (0: the samples carry none)."""

    train: Dataset
    val: Dataset | None
    tile_size: int
    num_labels: int = 0
    endless: bool = False


@dataclass
class DataBundle:
    """What train.py and the recipes get: loaders, the datasets behind them and the facts of the data."""

    train: DataLoader
    val: DataLoader | None
    train_set: Dataset
    val_set: Dataset | None
    train_items: Dataset
    tile_size: int
    num_labels: int
    config: dict[str, Any]
    start_batch: int = 0

    def with_datasets(self, train_items: Dataset, val_set: Dataset | None, in_memory: bool = False) -> "DataBundle":
        """The same loaders over other (finite) datasets, e.g. latents cached from these ones; in_memory: no workers."""
        data = Datasets(train_items, val_set, self.tile_size, self.num_labels)
        return make_loaders(data, self.config, self.start_batch, workers=0 if in_memory else None)


class ShuffledStream(Dataset):
    """Endless, resumable stream over a finite dataset: each pass is a fresh seeded permutation.

    Position i maps to item perm_epoch[i mod n] of pass i // n, and is fetched as index epoch * n + j so
    the dataset's own per-index randomness (augmentation) differs between passes.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        n = len(self.dataset)
        epoch, pos = divmod(index, n)
        j = int(np.random.default_rng([self.seed, epoch]).permutation(n)[pos])
        return self.dataset[epoch * n + j]


def data_paths(config: dict[str, Any]) -> dict[str, Path | None]:
    """Resolve the data root, slide folder, annotation file and split file for a config."""
    layout = LAYOUTS[config["dataset"]]
    root = Path(config["data_root"] or Path("data") / config["dataset"])
    split_file = config["split_file"] or (str(root / layout.split_file) if layout.split_file else None)
    return {
        "root": root,
        "slides": Path(config["slides_dir"]) if config["slides_dir"] else root / layout.slides,
        "annotations": Path(config["annotation_file"]) if config["annotation_file"] else root / layout.annotations,
        "split_file": Path(split_file) if split_file else None,
    }


def read_annotations(path: Path, config: dict[str, Any]) -> list[Annotation]:
    """Pick the reader by file type: SlideRunner .sqlite, MIDOG .json, or a folder of meningioma point files."""
    layout = LAYOUTS[config["dataset"]]
    mitotic = tuple(config["mitotic_classes"] or layout.mitotic)
    negative = tuple(config["negative_classes"]) if config["negative_classes"] else layout.negative
    if negative is not None and [n.lower() for n in negative] == ["all"]:
        negative = None  # every class that is not mitotic, as the original hard label (agreedClass == mitotic) has it
    class_map = ClassMap(mitotic=mitotic, negative=negative)
    soft = dict(soft=config["soft_mode"], annotators=config["annotators"], thresholds=config.get("soft_thresholds", DEFAULT_SOFT_THRESHOLDS))
    if path.is_dir():
        if config["annotators"]:
            raise DataError(f"--annotators: the meningioma point files in {path} hold no votes (their score words are the soft labels)")
        return read_meningioma(path, indeterminate=config["indeterminate"])
    if path.suffix.lower() in (".sqlite", ".db", ".sqlite3"):
        return read_sliderunner(path, class_map=class_map, **soft)
    if path.suffix.lower() == ".json":
        return read_midog_json(path, class_map=class_map, tumor_types=config["tumor_types"], **soft)
    if not path.exists():
        raise DataError(f"annotation file {path} does not exist")
    raise DataError(f"annotation file {path}: expected a SlideRunner .sqlite, a MIDOG .json or a folder of point files")


def prepare_synthetic(config: dict[str, Any]) -> None:
    """Generate the embedded demo data into --data_root when it is not there yet."""
    root = Path(config["data_root"] or "data/synthetic")
    if not synthetic_paths(root)["database"].is_file():
        print(f"generating the synthetic demo slides into {root}", file=sys.stderr)
        generate_synthetic_dataset(root)


def layout_tiles(config: dict[str, Any]) -> Path:
    """The tiled folder of a layout data set: --data_root itself when already tiled, else its tiling (cached)."""
    root = Path(config["data_root"] or Path("data") / config["dataset"])
    if is_tiled_folder(root):
        return root
    if config["dataset"] == "synthetic_monuseg" and not (root / "Tissue Images").is_dir():
        print(f"generating the synthetic MoNuSeg-format set into {root}", file=sys.stderr)
        generate_synthetic_monuseg(root)
    if not (root / "Tissue Images").is_dir():
        raise DataError(f"{root}: expected the MoNuSeg layout ('Tissue Images/', 'Annotations/') or a tiled folder (images/, inst_masks/)")
    size, stride = config["tile_size"], config["stride"] or config["tile_size"]
    return tile_monuseg(root, root / f"tiles_{size}_{stride}", size=size, stride=stride, min_area=config["min_area"])


def cluster_members(path: str | Path, cluster_id: int) -> set[str]:
    """Tile names of one cluster in a CSV written by tools.cluster (columns name, cluster, ...)."""
    rows = read_csv_rows(path, ("name", "cluster"), "--cluster_file")
    try:
        members = {row["name"] for row in rows if int(row["cluster"]) == cluster_id}
    except ValueError:
        raise DataError(f"--cluster_file {path}: the cluster column must hold integers") from None
    if not members:
        raise DataError(f"--cluster_file {path}: cluster {cluster_id} has no tiles")
    return members


def layout_split(config: dict[str, Any]) -> tuple[Path, list[str], list[str]]:
    """Tiled folder and its train / validation tile names (by source image; one cluster with --cluster_file)."""
    tiles = layout_tiles(config)
    names = list_tiles(tiles)
    if config["cluster_file"]:
        members = cluster_members(config["cluster_file"], config["cluster_id"])
        unknown = sorted(members - set(names))
        if unknown:
            raise DataError(f"--cluster_file {config['cluster_file']}: tiles {unknown[:3]} are not in {tiles}")
        names = [n for n in names if n in members]
    train_names, val_names = split_names(names, config["val_fraction"], config["seed"])
    return tiles, train_names, val_names


def build_layout_datasets(config: dict[str, Any]) -> Datasets:
    tiles, train_names, val_names = layout_split(config)
    maps = MapOptions(**map_settings(config))
    train = LayoutPatches(tiles, maps, train_names, augment=config["augment"], seed=config["seed"])
    val = LayoutPatches(tiles, maps, val_names, augment=False, seed=config["seed"]) if val_names else None
    return Datasets(train, val, config["tile_size"])


def layout_dataset(config: dict[str, Any], model_config: dict[str, Any], masks_dir: str | Path | None = None) -> LayoutPatches:
    """Layouts to sample from: a given tiled folder, or the training tiles of the run that made the checkpoint."""
    maps = MapOptions(**model_config["maps"], shuffle_colour=False)
    if masks_dir is not None:
        if not is_tiled_folder(masks_dir):
            raise DataError(f"--masks {masks_dir}: expected a tiled folder with images/ and inst_masks/")
        return LayoutPatches(masks_dir, maps, augment=False)
    tiles, train_names, _ = layout_split(config)
    return LayoutPatches(tiles, maps, train_names, augment=False)


SYNTHETIC_TILE_COUNT = 1200


def tile_stack_path(config: dict[str, Any]) -> Path:
    """The .npy stack of a tile data set; the synthetic one is cut from the synthetic demo slides when missing."""
    root = Path(config["data_root"] or Path("data") / config["dataset"])
    if root.suffix == ".npy":
        return root
    path = root / "tiles.npy"
    if config["dataset"] == "synthetic_tiles" and not path.is_file():
        slides = root / "slides"
        print(f"cutting {SYNTHETIC_TILE_COUNT} synthetic {config['tile_size']} px tiles into {path}", file=sys.stderr)
        generate_synthetic_dataset(slides, progress=False)
        tiles = tiles_from_slides(sorted(synthetic_paths(slides)["slides_dir"].glob("*.tif")), config["tile_size"], SYNTHETIC_TILE_COUNT, config["seed"])
        write_stack(path, tiles)
    return path


def build_tile_datasets(config: dict[str, Any]) -> Datasets:
    """Training stream and validation tiles of a stack: validation is the last --val_fraction of the training
    part, just before the held-out test tail (--test_size), which training never sees."""
    path = tile_stack_path(config)
    stack = open_stack(path)
    size = int(stack.shape[-2])
    count = int(stack.shape[0])
    del stack
    if "tile_size" in config.get("explicit", ()) and config["tile_size"] != size:
        raise DataError(f"--tile_size {config['tile_size']} differs from the tiles of {path} ({size} px)")
    labels = labels_from_csv(config["cluster_file"]) if config.get("cluster_file") else None
    train_count = count - config["test_size"]
    train_tiles, val_tiles = tail_split(train_count, share_of(train_count, config["val_fraction"]))
    if not train_tiles:
        raise DataError(f"{path}: {count} tiles leave none for training with --test_size {config['test_size']} and --val_fraction {config['val_fraction']}")
    common = {"test_size": config["test_size"], "slice_index": config["stack_slice"], "labels": labels}
    train = TileStack(path, "train", augment=config["augment"], seed=config["seed"], indices=train_tiles, **common)
    val = TileStack(path, "train", indices=val_tiles, **common) if val_tiles else None
    return Datasets(train, val, size, max(labels.values()) + 1 if labels else 0)


def stack_split(config: dict[str, Any], split: str, labels: bool = False) -> TileStack:
    """Unaugmented tiles of a stack's split: "test" is the held-out tail, "train" everything before it
    (training and validation tiles); with labels, each tile's cluster from --cluster_file."""
    if split == "test" and config["test_size"] < 1:
        raise DataError("the run was trained with --test_size 0: there are no held-out tiles")
    cluster_labels = labels_from_csv(config["cluster_file"]) if labels and config.get("cluster_file") else None
    return TileStack(tile_stack_path(config), split, test_size=config["test_size"], slice_index=config["stack_slice"], labels=cluster_labels)


PCAM_FAKE_COUNT = 400
PCAM_CLASSES = 2


def pcam_root(config: dict[str, Any]) -> Path:
    """PatchCamelyon files (h5 or Kaggle layout); the synthetic set is written in the h5 layout when missing."""
    root = Path(config["data_root"] or Path("data") / config["dataset"])
    if config["dataset"] == "synthetic_pcam" and not is_pcam_h5(root):
        print(f"writing a synthetic PatchCamelyon set (h5 layout) into {root}", file=sys.stderr)
        make_fake_pcam_h5(root, PCAM_FAKE_COUNT, config["seed"])
    return root


def build_pcam_datasets(config: dict[str, Any]) -> Datasets:
    """PatchCamelyon train / validation patches, optionally centre-cropped and restricted to one class."""
    root = pcam_root(config)
    size = config["pcam_crop"] or 96
    if "tile_size" in config.get("explicit", ()) and config["tile_size"] != size:
        raise DataError(f"--tile_size {config['tile_size']} differs from the PatchCamelyon patch size {size} (set --pcam_crop)")
    common = {"crop": config["pcam_crop"], "label_filter": config["class_filter"]}
    if is_pcam_h5(root):
        train = PCamH5(root, "train", augment=config["augment"], seed=config["seed"], **common)
        val = PCamH5(root, "valid", **common)
    elif is_pcam_kaggle(root):
        ids = list(read_kaggle_labels(root / "train_labels.csv"))
        train_ids, val_ids = kaggle_split(ids, config["val_fraction"], config["seed"])
        train = PCamKaggle(root, train_ids, augment=config["augment"], seed=config["seed"], **common)
        val = PCamKaggle(root, val_ids, **common)
    else:
        raise DataError(f"{root}: expected PatchCamelyon h5 files (camelyonpatch_level_2_split_*_x.h5) or the Kaggle layout (train/, train_labels.csv)")
    return Datasets(train, val, size, PCAM_CLASSES)


def build_segmentation_datasets(config: dict[str, Any]) -> Datasets:
    """Tile pairs of each --datasets folder split by slide (--val_fraction); training batches mix the folders at
    --ratios, validation holds every folder's held-out slides."""
    num_classes = config["seg_classes"]
    train_sources, val_pairs, sizes = [], [], {}
    for folder in segmentation_folders(config):
        pairs = list_pairs(folder)
        sizes[folder] = tile_size_of(pairs)
        train, val = split_pairs(pairs, config["val_fraction"], config["seed"])
        train_sources.append(TilePairs(train, num_classes, augment=config["augment"], stain_augment=config["stain_augment"], seed=config["seed"]))
        val_pairs += val
    size = next(iter(sizes.values()))
    for folder, other in sizes.items():
        if other != size:
            raise DataError(f"--datasets: tiles of {folder} are {other} px but those of {next(iter(sizes))} are {size} px")
    if "tile_size" in config.get("explicit", ()) and config["tile_size"] != size:
        raise DataError(f"--tile_size {config['tile_size']} differs from the tiles of {next(iter(sizes))} ({size} px)")
    train_set = MixedTilePairs(train_sources, segmentation_ratios(config), config["batch_size"], seed=config["seed"])
    val_set = TilePairs(val_pairs, num_classes, seed=config["seed"]) if val_pairs else None
    return Datasets(train_set, val_set, size, num_classes, endless=True)


def region_root(config: dict[str, Any]) -> Path:
    """The folder of a region set; the synthetic one is generated there when missing."""
    root = Path(config["data_root"] or Path("data") / config["dataset"])
    if config["dataset"] == "synthetic_regions" and not regions_paths(root)["database"].is_file():
        print(f"generating the synthetic region slides into {root}", file=sys.stderr)
        generate_synthetic_regions(root, progress=False)
    return root


def open_regions(config: dict[str, Any]) -> RegionSlides:
    """The region slides of the config: a set folder (synthetic_regions) or --slides_dir + --annotation_file,
    read at --level / --mpp, with only --labelled_per_class training slides per class labelled."""
    where = dict(level=config["level"], mpp=config["mpp"])
    if config["dataset"] == "regions":
        slides = open_wsi_regions(config["slides_dir"], config["annotation_file"], config["class_map"], config["split_file"], **where)
    else:
        slides = open_region_slides(region_root(config), config["class_map"] or REGIONS_CLASS_MAP, **where)
    classes = slide_classes(config["split_file"]) if config["dataset"] == "regions" and config["split_file"] else None
    return with_labelled(slides, config["labelled_per_class"], classes, config["seed"])


def build_region_datasets(config: dict[str, Any]) -> Datasets:
    """Patches of the labelled training slides; validation is a seeded --val_fraction share of those patches.
    Held-out (and unlabelled) slides are only style sources at generation."""
    slides = open_regions(config)
    names = slides.labelled_names()
    if not names:
        raise DataError(f"{slides.root}: no training slide (split 'train') to take layouts from")
    size = config["tile_size"]
    positions = tissue_positions(slides, names, size, config["patches_per_slide"], config["seed"])
    order = np.random.default_rng([config["seed"], 11]).permutation(len(positions))
    held = share_of(len(positions), config["val_fraction"])
    val_positions, train_positions = [positions[i] for i in order[:held]], [positions[i] for i in order[held:]]
    if not train_positions:
        raise DataError(f"{slides.root}: --val_fraction {config['val_fraction']} leaves no training patches")
    common = dict(tile_size=size, num_style=config["num_style_images"], style_mode=config["style_sampling"], seed=config["seed"],
                  radius=float(size))
    train = RegionPatches(slides, train_positions, augment=config["augment"], **common)
    val = RegionPatches(slides, val_positions, **common) if val_positions else None
    return Datasets(train, val, size)


def build_flower_datasets(config: dict[str, Any]) -> Datasets:
    """Oxford-102 flowers: the labelled training images (--labelled_per_class per species); validation: the
    validation split."""
    flowers = open_flowers(config["data_root"] or Path("data") / config["dataset"])
    common = dict(tile_size=config["tile_size"], num_style=config["num_style_images"], style_mode=config["style_sampling"], seed=config["seed"])
    train = Flowers(flowers, "train", labelled_per_class=config["labelled_per_class"], augment=config["augment"], **common)
    val = Flowers(flowers, "validation", **common) if flowers.names("validation") else None
    return Datasets(train, val, config["tile_size"])


def build_tile_style_datasets(config: dict[str, Any]) -> Datasets:
    """A tile-pair folder as layouts with style references: whole slides held out for validation (their slides
    are the held-out style units); classes K from the masks."""
    folder = Path(config["data_root"] or Path("data") / config["dataset"])
    pairs = list_pairs(folder)
    size = tile_size_of(pairs)
    if "tile_size" in config.get("explicit", ()) and config["tile_size"] != size:
        raise DataError(f"--tile_size {config['tile_size']} differs from the tiles of {folder} ({size} px)")
    classes = mask_classes(pairs)
    train_pairs, val_pairs = split_pairs(pairs, config["val_fraction"], config["seed"])
    if not train_pairs:
        raise DataError(f"{folder}: --val_fraction {config['val_fraction']} leaves no training tiles")
    heldout = {pair.slide for pair in val_pairs}
    common = dict(num_style=config["num_style_images"], style_mode=config["style_sampling"], seed=config["seed"], heldout=heldout)
    train = TileStyles(train_pairs, classes, labelled_per_class=config["labelled_per_class"], augment=config["augment"], **common)
    val = TileStyles(val_pairs, classes, style_pairs=train_pairs, **common) if val_pairs else None
    return Datasets(train, val, size)


def build_datasets(config: dict[str, Any]) -> Datasets:
    """Training items and validation set of the config's data set."""
    if config["dataset"] == "flowers102":
        return build_flower_datasets(config)
    if config["dataset"] == "tile_pairs":
        return build_tile_style_datasets(config)
    if config["dataset"] in REGION_DATASETS:
        return build_region_datasets(config)
    if config["dataset"] in SEGMENTATION_DATASETS:
        return build_segmentation_datasets(config)
    if config["dataset"] in PCAM_DATASETS:
        return build_pcam_datasets(config)
    if config["dataset"] in LAYOUT_DATASETS:
        return build_layout_datasets(config)
    if config["dataset"] in TILE_DATASETS:
        return build_tile_datasets(config)
    if config["dataset"] == "synthetic":
        prepare_synthetic(config)
    paths = data_paths(config)
    annotations = read_annotations(paths["annotations"], config)
    mode = config["split"] or ("slides" if paths["split_file"] else "y_percentile")
    split_file = paths["split_file"] if mode == "slides" else config["split_file"]
    train, val = split_annotations(annotations, mode, split_file, config["val_fraction"])
    slide_paths = resolve_slides(train + val, paths["slides"])
    check_tile_fits(slide_dimensions(slide_paths), config["tile_size"])
    options = PatchOptions(
        tile_size=config["tile_size"],
        scaling=config["scaling"],
        score=config["soft_vs_hard"],
        max_offset=config["max_offset"],
        augment=config["augment"],
        jitter=patch_jitter(config),
    )
    eval_options = PatchOptions(tile_size=options.tile_size, scaling=options.scaling, score=options.score, augment=False)
    train_set = WSITrainPatches(
        train, slide_paths, options, config["batch_size"], config["mite_ratio"], seed=config["seed"],
        sampling=config.get("soft_sampling", "hard_label"),
    )
    val_set = WSIEvalPatches(val, slide_paths, eval_options) if val else None
    return Datasets(train_set, val_set, config["tile_size"], endless=True)


def patch_jitter(config: dict[str, Any]) -> ColorJitter:
    """The colour jitter of the training patches: classifiers' --color_jitter_p and --color_jitter ranges (off
    for other model types and for runs that predate them)."""
    p = config.get("color_jitter_p") or 0.0
    if p <= 0:
        return ColorJitter()
    b_lo, b_hi, c_lo, c_hi, s_lo, s_hi, h_lo, h_hi = config["color_jitter"]
    return ColorJitter(p, (b_lo, b_hi), (c_lo, c_hi), (s_lo, s_hi), (h_lo, h_hi))


def validation_set(config: dict[str, Any]) -> Dataset | None:
    """The unaugmented validation set of the run that a config describes."""
    return build_datasets({**config, "augment": False}).val


def build_dataloaders(config: dict[str, Any], start_batch: int = 0) -> DataBundle:
    """DataLoaders for training (an endless, resumable stream per rank) and validation."""
    return make_loaders(build_datasets(config), config, start_batch)


def make_loaders(data: Datasets, config: dict[str, Any], start_batch: int, workers: int | None = None) -> DataBundle:
    train_set = data.train if data.endless else ShuffledStream(data.train, config["seed"])
    val_set = data.val
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    workers = config["num_workers"] if workers is None else workers
    pin = torch.cuda.is_available() and str(config.get("device", "auto")) != "cpu"
    train = DataLoader(
        train_set,
        batch_size=config["batch_size"],
        sampler=StreamSampler(config["batch_size"], start_batch, rank, world),
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(config["seed"]),
    )
    val = None
    if val_set is not None:
        val = DataLoader(val_set, batch_size=config["batch_validation"], shuffle=False, num_workers=workers, pin_memory=pin,
                         generator=torch.Generator().manual_seed(config["seed"]))
    return DataBundle(train, val, train_set, val_set, data.train, data.tile_size, data.num_labels, config, start_batch)


def summarise(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--summary: file {path} does not exist")
    if path.suffix.lower() == ".json":
        return midog_summary(path)
    return sliderunner_summary(path)


def print_summary(argv: list[str] | None = None) -> None:
    parser = Parser(description="Inspect annotation files.")
    parser.add_argument("--summary", required=True, metavar="FILE", help="SlideRunner .sqlite or MIDOG .json")
    print(json.dumps(summarise(parser.parse_args(argv).summary), indent=2))


def main(argv: list[str] | None = None) -> int:
    return run_main(print_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
