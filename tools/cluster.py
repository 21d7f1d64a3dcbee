"""Cluster the patches of a tiled folder by stain, nuclei and texture, for fine-tuning on one cluster.

Features of a patch (FEATURE_NAMES, in this order):
- haematoxylin_mean, haematoxylin_std, eosin_mean, eosin_std: the H and E channels of skimage.color.rgb2hed
- nuclei_per_1e4_px: nuclei (instance ids) per 10,000 px
- nucleus_area_mean, nucleus_area_std: nucleus area in px (0 without nuclei)
- nucleus_eccentricity_mean: mean eccentricity of the nuclei's fitted ellipses (0 without nuclei)
- foreground_fraction: share of pixels inside a nucleus
- glcm_contrast, glcm_homogeneity, glcm_energy, glcm_correlation: grey-level co-occurrence statistics of the
  grey image quantised to 32 levels, averaged over distances 1 and 2 px and the four directions

`python -m tools.cluster --tiles DIR --k 4 --out clusters.csv`
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from skimage.color import rgb2gray, rgb2hed
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from common.cli import Parser, run_main
from common.errors import ConfigError, DataError
from common.figures import labelled_grid
from common.files import check_writable_output, save_image_atomic, write_csv_atomic
from common.options import number
from tools.segmentation import Tile, read_tiled_folder

FEATURE_NAMES = (
    "haematoxylin_mean",
    "haematoxylin_std",
    "eosin_mean",
    "eosin_std",
    "nuclei_per_1e4_px",
    "nucleus_area_mean",
    "nucleus_area_std",
    "nucleus_eccentricity_mean",
    "foreground_fraction",
    "glcm_contrast",
    "glcm_homogeneity",
    "glcm_energy",
    "glcm_correlation",
)
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def patch_features(image_uint8: np.ndarray, inst_mask: np.ndarray) -> np.ndarray:
    """The FEATURE_NAMES vector (float64) of one H x W x 3 uint8 patch and its H x W instance ids."""
    image, instances = np.asarray(image_uint8), np.asarray(inst_mask)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"patch_features: image must be an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
    if instances.shape != image.shape[:2] or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"patch_features: inst_mask must be an integer array of shape {image.shape[:2]}, got {instances.dtype} {instances.shape}")
    hed = rgb2hed(image)
    nuclei = regionprops(instances.astype(np.int64))
    areas = np.array([n.area for n in nuclei], dtype=np.float64)
    eccentricity = np.array([n.eccentricity for n in nuclei], dtype=np.float64)
    grey = np.round(rgb2gray(image) * 255).astype(np.uint8) // (256 // GLCM_LEVELS)
    glcm = graycomatrix(grey, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True)
    texture = [float(np.mean(graycoprops(glcm, prop))) for prop in ("contrast", "homogeneity", "energy", "correlation")]
    return np.array(
        [
            hed[..., 0].mean(),
            hed[..., 0].std(),
            hed[..., 1].mean(),
            hed[..., 1].std(),
            len(nuclei) / instances.size * 1e4,
            areas.mean() if len(areas) else 0.0,
            areas.std() if len(areas) else 0.0,
            eccentricity.mean() if len(eccentricity) else 0.0,
            float((instances > 0).mean()),
            *texture,
        ],
        dtype=np.float64,
    )


def cluster_tiles(tiles: Sequence[Tile], k: int, seed: int = 0, where: str = "patches") -> list[dict]:
    """KMeans(k) on standardised patch features; cluster ids are numbered by size, largest first.

    DataError (naming `where`) when fewer than k patches have distinct features."""
    if not 1 <= k <= len(tiles):
        raise ValueError(f"k must be between 1 and the number of patches ({len(tiles)}), got {k}")
    features = np.stack([patch_features(t.image, t.instances) for t in tiles])
    distinct = len(np.unique(features, axis=0))
    if distinct < k:
        raise DataError(f"{where}: only {distinct} patch(es) with distinct features, fewer than k = {k} clusters; "
                        "choose a smaller --k")
    scaled = StandardScaler().fit_transform(features)
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(scaled)
    distance = kmeans.transform(scaled)[np.arange(len(tiles)), kmeans.labels_]
    sizes = np.bincount(kmeans.labels_, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], int(np.argmax(kmeans.labels_ == c))))
    renumber = {old: new for new, old in enumerate(order)}
    return [
        {"name": tile.name, "cluster": renumber[int(kmeans.labels_[i])], "distance": float(distance[i]), **dict(zip(FEATURE_NAMES, features[i].tolist()))}
        for i, tile in enumerate(tiles)
    ]


def cluster_patches(tiled_dir: str | os.PathLike, k: int, seed: int = 0) -> list[dict]:
    """Per patch of the tiled folder: name, cluster, distance to its cluster centre, and the features."""
    tiles = read_tiled_folder(tiled_dir)
    if not 1 <= k <= len(tiles):
        raise ValueError(f"k must be between 1 and the number of patches in {tiled_dir} ({len(tiles)}), got {k}")
    return cluster_tiles(tiles, k, seed)


def _thumbnail(image: np.ndarray, size: int) -> torch.Tensor:
    """3 x size x size tensor in [-1, 1] of an H x W x 3 uint8 image (resized, area-averaged)."""
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.BOX), dtype=np.float32)
    return torch.from_numpy(small).permute(2, 0, 1) / 127.5 - 1.0


def _short(name: str, width: int = 12) -> str:
    """`name`, or its start and end around an ellipsis when longer than `width` characters."""
    return name if len(name) <= width else f"{name[: width // 3]}\u2026{name[-(width - width // 3 - 1):]}"


def example_sheet(tiles: Sequence[Tile], rows: Sequence[dict], per_cluster: int = 6, size: int = 96) -> Image.Image:
    """One row per cluster: its patches closest to the centre, captioned with cluster, name and distance."""
    by_name = {t.name: t for t in tiles}
    images, captions = [], []
    for cluster in range(max(r["cluster"] for r in rows) + 1):
        members = sorted((r for r in rows if r["cluster"] == cluster), key=lambda r: r["distance"])[:per_cluster]
        images.append([_thumbnail(by_name[r["name"]].image, size) for r in members])
        captions.append([f"{_short(r['name'])}\nc{cluster}  d={r['distance']:.2f}" for r in members])
    return labelled_grid(images, captions, scale=1)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description="Cluster the patches of a tiled folder (KMeans on stain, nuclei and texture features).")
    p.add_argument("--tiles", required=True, help="tiled folder (images/ with inst_masks/ and/or bin_masks/ or labels/)")
    p.add_argument("--k", type=number(int, 1), required=True, help="number of clusters")
    p.add_argument("--out", required=True, help="CSV with name,cluster,distance,<features>; example patches go next to it (.png)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="KMeans seed (default 0)")
    p.add_argument("--examples", type=number(int, 1), default=6, help="example patches per cluster in the picture (default 6)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p


def run(argv: Sequence[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    for path in (out, out.with_suffix(".png")):
        check_writable_output(path, "--out", folder=False)
        if path.exists() and not args.overwrite:
            raise ConfigError(f"--out {path} already exists; pass --overwrite to replace it")
    tiles = read_tiled_folder(args.tiles)
    if not 1 <= args.k <= len(tiles):
        raise ConfigError(f"--k must be between 1 and the number of patches in {args.tiles} ({len(tiles)}), got {args.k}")
    rows = cluster_tiles(tiles, args.k, args.seed, where=f"--tiles {args.tiles}")
    write_csv_atomic(out, ("name", "cluster", "distance", *FEATURE_NAMES), rows)
    save_image_atomic(example_sheet(tiles, rows, args.examples), out.with_suffix(".png"))
    sizes = np.bincount([r["cluster"] for r in rows], minlength=args.k)
    print("cluster sizes: " + ", ".join(f"{c}: {n}" for c, n in enumerate(sizes)))
    print(f"clusters: {out}, examples: {out.with_suffix('.png')}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
