"""Cut the region slides of one split into a tile-pair folder (images/*.png + masks/*.png) for segmentation.

Tiles lie on a grid of --tile_size px (no overlap) at the slides' level; those with at least --min_tissue labelled
tissue are kept, at most --per_slide per slide (a seeded choice). A tile is named `<slide>_<row>-<col>.png`
(underscores of the slide name become '-'), so segmentation groups its tiles by slide.

python -m tools.region_tiles --data_root data/synthetic_regions --split heldout --tile_size 32 --out data/regions_test
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.cli import Parser, run_main
from common.errors import ConfigError
from common.files import check_replaceable, check_writable_output, mark_as_ours, staged_folder
from common.options import number
from data.region_patches import MIN_TISSUE, RegionPatches, RegionSlides, grid_positions, open_region_slides, open_wsi_regions
from data.synthetic_regions import CLASS_MAP


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--data_root", help="a region set folder (slides.csv, WSI/, Annotations/regions.sqlite)")
    p.add_argument("--slides_dir", help="instead of --data_root: a folder of slides ...")
    p.add_argument("--annotation_file", help="... with their polygons in a SlideRunner database")
    p.add_argument("--split_file", help="with --slides_dir: CSV slide,split (default: slides with polygons are train)")
    p.add_argument("--class_map", help=f"region classes to labels (default for a set folder: {CLASS_MAP})")
    p.add_argument("--level", type=number(int, 0), help="pyramid level to read (default 0)")
    p.add_argument("--mpp", type=number(float, 0, low_open=True), help="read at the level whose microns per pixel are nearest this")
    p.add_argument("--split", default="heldout", choices=("train", "heldout", "all"), help="slides to cut (default heldout)")
    p.add_argument("--tile_size", type=number(int, 8), default=32, help="tile size in pixels (default 32)")
    p.add_argument("--per_slide", type=number(int, 1), default=64, help="at most this many tiles per slide (default 64)")
    p.add_argument("--min_tissue", type=number(float, 0, 1), default=MIN_TISSUE, help=f"least labelled-tissue share of a tile (default {MIN_TISSUE})")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the tiles chosen per slide (default 0)")
    p.add_argument("--out", required=True, help="the tile-pair folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


def open_slides(args: argparse.Namespace) -> RegionSlides:
    """The region slides of --data_root or of --slides_dir + --annotation_file."""
    if args.level is not None and args.mpp is not None:
        raise ConfigError("--level and --mpp both choose the pyramid level: give one of them")
    where = dict(level=args.level, mpp=args.mpp)
    if args.data_root and not args.slides_dir:
        return open_region_slides(args.data_root, args.class_map or CLASS_MAP, **where)
    if args.slides_dir and args.annotation_file and args.class_map and not args.data_root:
        return open_wsi_regions(args.slides_dir, args.annotation_file, args.class_map, args.split_file, **where)
    raise ConfigError("give --data_root (a region set folder) or --slides_dir with --annotation_file and --class_map")


def check_output(out: Path, args: argparse.Namespace) -> None:
    """--out can be written as a folder; an existing one only with --overwrite, and only one this tool wrote that
    holds none of the inputs."""
    check_writable_output(out, "--out", folder=True)
    if not (out.exists() or out.is_symlink()):
        return
    if not args.overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it")
    inputs = [p for p in (args.data_root, args.slides_dir, args.annotation_file, args.split_file) if p]
    check_replaceable(out, "--out", keep=inputs)


def run(argv: Sequence[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    check_output(out, args)
    slides = open_slides(args)
    names = slides.names(args.split)
    if not names:
        raise ConfigError(f"--split {args.split}: the set has no such slides")
    positions = grid_positions(slides, names, args.tile_size, args.per_slide, args.seed, args.min_tissue)
    patches = RegionPatches(slides, positions, args.tile_size, 0, "none")

    def write(folder: Path) -> None:
        mark_as_ours(folder, "tools/region_tiles.py")
        (folder / "images").mkdir()
        (folder / "masks").mkdir()
        for index, (slide, x, y) in enumerate(tqdm(positions, desc="tiles")):
            image, labels = patches.layout(index)
            name = f"{Path(slide).stem.replace('_', '-')}_{y // args.tile_size:04d}-{x // args.tile_size:04d}.png"
            Image.fromarray(image).save(folder / "images" / name)
            Image.fromarray(np.where(labels < slides.num_classes, labels, 0).astype(np.uint8)).save(folder / "masks" / name)

    staged_folder(out, write)
    print(f"{len(positions)} tiles of {len(names)} {args.split} slides ({slides.num_classes} classes) into {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
