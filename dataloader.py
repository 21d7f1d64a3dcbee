"""build_dataloaders(config): data set name -> annotations -> patch datasets -> DataLoaders (DDP-aware).

Run as a script, `python dataloader.py --summary FILE` prints a JSON summary of an annotation file.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from config import LAYOUT_DATASETS, map_settings
from data.annotations import Annotation, ClassMap, DataError
from data.condition_maps import MapOptions
from data.meningioma import read_meningioma
from data.midog import midog_summary, read_midog_json
from data.monuseg import LayoutPatches, is_tiled_folder, list_tiles, split_names, tile_monuseg
from data.sliderunner import read_sliderunner, sliderunner_summary
from data.synthetic import generate_synthetic_dataset, synthetic_paths
from data.synthetic_monuseg import generate_synthetic_monuseg
from data.wsi import (
    PatchOptions,
    StreamSampler,
    WSIEvalPatches,
    WSITrainPatches,
    check_tile_fits,
    resolve_slides,
    slide_dimensions,
    split_annotations,
)


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
class DataBundle:
    train: DataLoader
    val: DataLoader | None
    train_set: Dataset
    val_set: Dataset | None


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
    class_map = ClassMap(mitotic=mitotic, negative=negative)
    if path.is_dir():
        return read_meningioma(path, indeterminate=config["indeterminate"])
    if path.suffix.lower() in (".sqlite", ".db", ".sqlite3"):
        return read_sliderunner(path, class_map=class_map, soft=config["soft_mode"], annotators=config["annotators"])
    if path.suffix.lower() == ".json":
        return read_midog_json(path, class_map=class_map, tumor_types=config["tumor_types"], soft=config["soft_mode"])
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
    """Tile names of one cluster in a CSV written by cluster.py (columns name, cluster, ...)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--cluster_file {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"name", "cluster"} <= set(reader.fieldnames):
            raise DataError(f"--cluster_file {path}: expected columns name,cluster (as written by cluster.py)")
        members = {row["name"] for row in reader if int(row["cluster"]) == cluster_id}
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


def build_layout_datasets(config: dict[str, Any]) -> tuple[Dataset, LayoutPatches | None]:
    tiles, train_names, val_names = layout_split(config)
    maps = MapOptions(**map_settings(config))
    train = LayoutPatches(tiles, maps, train_names, augment=config["augment"], seed=config["seed"])
    val = LayoutPatches(tiles, maps, val_names, augment=False, seed=config["seed"]) if val_names else None
    return ShuffledStream(train, config["seed"]), val


def layout_dataset(config: dict[str, Any], model_config: dict[str, Any], masks_dir: str | Path | None = None) -> LayoutPatches:
    """Layouts to sample from: a given tiled folder, or the training tiles of the run that made the checkpoint."""
    maps = MapOptions(**model_config["maps"], shuffle_colour=False)
    if masks_dir is not None:
        if not is_tiled_folder(masks_dir):
            raise DataError(f"--masks {masks_dir}: expected a tiled folder with images/ and inst_masks/")
        return LayoutPatches(masks_dir, maps, augment=False)
    tiles, train_names, _ = layout_split(config)
    return LayoutPatches(tiles, maps, train_names, augment=False)


def build_datasets(config: dict[str, Any]) -> tuple[Dataset, Dataset | None]:
    """Training stream and validation set for the config's data set."""
    if config["dataset"] in LAYOUT_DATASETS:
        return build_layout_datasets(config)
    if config["dataset"] == "synthetic":
        prepare_synthetic(config)
    paths = data_paths(config)
    annotations = read_annotations(paths["annotations"], config)
    mode = config["split"] or ("slides" if paths["split_file"] else "y_percentile")
    train, val = split_annotations(annotations, mode, paths["split_file"], config["val_fraction"])
    slide_paths = resolve_slides(train + val, paths["slides"])
    check_tile_fits(slide_dimensions(slide_paths), config["tile_size"])
    options = PatchOptions(
        tile_size=config["tile_size"],
        scaling=config["scaling"],
        score=config["soft_vs_hard"],
        max_offset=config["max_offset"],
        augment=config["augment"],
    )
    eval_options = PatchOptions(tile_size=options.tile_size, scaling=options.scaling, score=options.score, augment=False)
    train_set = WSITrainPatches(
        train, slide_paths, options, config["batch_size"], config["mite_ratio"], seed=config["seed"]
    )
    val_set = WSIEvalPatches(val, slide_paths, eval_options) if val else None
    return train_set, val_set


def build_dataloaders(config: dict[str, Any], start_batch: int = 0) -> DataBundle:
    """DataLoaders for training (an endless, resumable stream per rank) and validation."""
    train_set, val_set = build_datasets(config)
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    workers = config["num_workers"]
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
        val = DataLoader(val_set, batch_size=config["batch_validation"], shuffle=False, num_workers=workers, pin_memory=pin)
    return DataBundle(train, val, train_set, val_set)


def summarise(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--summary: file {path} does not exist")
    if path.suffix.lower() == ".json":
        return midog_summary(path)
    return sliderunner_summary(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Inspect annotation files.")
    parser.add_argument("--summary", required=True, metavar="FILE", help="SlideRunner .sqlite or MIDOG .json")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(summarise(args.summary), indent=2))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
