"""build_dataloaders(config): data set name -> annotations -> patch datasets -> DataLoaders (DDP-aware).

Run as a script, `python dataloader.py --summary FILE` prints a JSON summary of an annotation file.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from data.annotations import Annotation, ClassMap, DataError
from data.meningioma import read_meningioma
from data.midog import midog_summary, read_midog_json
from data.sliderunner import read_sliderunner, sliderunner_summary
from data.synthetic import generate_synthetic_dataset, synthetic_paths
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
    train_set: WSITrainPatches
    val_set: WSIEvalPatches | None


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


def build_datasets(config: dict[str, Any]) -> tuple[WSITrainPatches, WSIEvalPatches | None]:
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
