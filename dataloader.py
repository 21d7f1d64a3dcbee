"""build_dataloaders(config): data set name -> dataset objects -> DataLoaders (DDP-aware, resumable streams).

Four families: WSI patches around annotations, MoNuSeg-style layout tiles, tile stacks (.npy), PatchCamelyon.

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

from config import LAYOUT_DATASETS, PCAM_DATASETS, TILE_DATASETS, map_settings
from data.annotations import Annotation, ClassMap, DataError
from data.condition_maps import MapOptions
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
    make_fake_pcam_h5,
    read_kaggle_labels,
)
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


def build_tile_datasets(config: dict[str, Any]) -> tuple[Dataset, TileStack | None]:
    """Training stream and validation tiles of a stack: validation is the last --val_fraction of the training
    part, just before the held-out test tail (--test_size), which training never sees."""
    path = tile_stack_path(config)
    stack = open_stack(path)
    size = int(stack.shape[-2])
    count = int(stack.shape[0])
    del stack
    if "tile_size" in config.get("explicit", ()) and config["tile_size"] != size:
        raise DataError(f"--tile_size {config['tile_size']} differs from the tiles of {path} ({size} px)")
    config["tile_size"] = size
    labels = labels_from_csv(config["cluster_file"]) if config.get("cluster_file") else None
    train_count = count - config["test_size"]
    n_val = int(round(config["val_fraction"] * train_count))
    if train_count - n_val < 1:
        raise DataError(f"{path}: {count} tiles leave none for training with --test_size {config['test_size']} and --val_fraction {config['val_fraction']}")
    common = {"test_size": config["test_size"], "slice_index": config["stack_slice"], "labels": labels}
    train = TileStack(path, "train", augment=config["augment"], seed=config["seed"], indices=range(train_count - n_val), **common)
    val = TileStack(path, "train", indices=range(train_count - n_val, train_count), **common) if n_val else None
    return ShuffledStream(train, config["seed"]), val


def stack_split(config: dict[str, Any], split: str, labels: bool = False) -> TileStack:
    """Unaugmented tiles of a stack's split: "test" is the held-out tail, "train" everything before it
    (training and validation tiles); with labels, each tile's cluster from --cluster_file."""
    if split == "test" and config["test_size"] < 1:
        raise DataError("the run was trained with --test_size 0: there are no held-out tiles")
    cluster_labels = labels_from_csv(config["cluster_file"]) if labels and config.get("cluster_file") else None
    return TileStack(tile_stack_path(config), split, test_size=config["test_size"], slice_index=config["stack_slice"], labels=cluster_labels)


PCAM_FAKE_COUNT = 400


def pcam_root(config: dict[str, Any]) -> Path:
    """PatchCamelyon files (h5 or Kaggle layout); the synthetic set is written in the h5 layout when missing."""
    root = Path(config["data_root"] or Path("data") / config["dataset"])
    if config["dataset"] == "synthetic_pcam" and not is_pcam_h5(root):
        print(f"writing a synthetic PatchCamelyon set (h5 layout) into {root}", file=sys.stderr)
        make_fake_pcam_h5(root, PCAM_FAKE_COUNT, config["seed"])
    return root


def build_pcam_datasets(config: dict[str, Any]) -> tuple[Dataset, Dataset | None]:
    """PatchCamelyon train / validation patches, optionally centre-cropped and restricted to one class."""
    root = pcam_root(config)
    size = config["pcam_crop"] or 96
    if "tile_size" in config.get("explicit", ()) and config["tile_size"] != size:
        raise DataError(f"--tile_size {config['tile_size']} differs from the PatchCamelyon patch size {size} (set --pcam_crop)")
    config["tile_size"] = size
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
    return ShuffledStream(train, config["seed"]), val


def build_datasets(config: dict[str, Any]) -> tuple[Dataset, Dataset | None]:
    """Training stream and validation set for the config's data set."""
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
        val = DataLoader(val_set, batch_size=config["batch_validation"], shuffle=False, num_workers=workers, pin_memory=pin,
                         generator=torch.Generator().manual_seed(config["seed"]))
    return DataBundle(train, val, train_set, val_set)


class CachedLatents(Dataset):
    """Latents encoded once (with their labels): the sample contract's `image` holds the latent."""

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor | None):
        self.latents = latents
        self.labels = labels

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.latents)
        sample = {"image": self.latents[i]}
        if self.labels is not None:
            sample["label"] = int(self.labels[i])
        return sample


@torch.no_grad()
def encode_all(dataset: Dataset, model: Any, device: torch.device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    latents, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latents.append(model.encode(batch["image"].to(device)).cpu())
        if "label" in batch:
            labels.append(batch["label"])
    return torch.cat(latents), (torch.cat(labels) if labels else None)


def cache_latents(data: DataBundle, model: Any, device: torch.device, path: Path, config: dict[str, Any]) -> DataBundle:
    """Encode the training and validation tiles once (unaugmented) into `path` and serve the latents from it."""
    if path.is_file():
        cache = torch.load(path, weights_only=True)
    else:
        base = getattr(data.train_set, "dataset", data.train_set)
        base.augment = False
        train, train_labels = encode_all(base, model, device, config["batch_validation"])
        cache = {"train": train, "train_labels": train_labels}
        if data.val_set is not None:
            cache["val"], cache["val_labels"] = encode_all(data.val_set, model, device, config["batch_validation"])
        torch.save(cache, path)
        print(f"cached {len(train)} training latents in {path}", file=sys.stderr)
    train_set = ShuffledStream(CachedLatents(cache["train"], cache["train_labels"]), config["seed"])
    val_set = CachedLatents(cache["val"], cache["val_labels"]) if "val" in cache else None
    rank, world = data.train.sampler.rank, data.train.sampler.world_size
    train = DataLoader(train_set, batch_size=config["batch_size"], sampler=StreamSampler(config["batch_size"], data.train.sampler.start_batch, rank, world),
                       generator=torch.Generator().manual_seed(config["seed"]))
    val = DataLoader(val_set, batch_size=config["batch_validation"], generator=torch.Generator()) if val_set is not None else None
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
