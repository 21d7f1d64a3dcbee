"""Fake PatchCamelyon sets in the real layouts (h5 release and Kaggle release), painted like H&E.

Tumour patches (label 1) are packed with large, dark, irregular nuclei; the others show stroma with a few pale
nuclei. Everything is deterministic by seed; files are written atomically and existing files are never
overwritten.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import tifffile

from common.files import atomic_path
from data.annotations import DataError
from data.painting import (
    Canvas,
    draw_nucleus,
    local_grid,
    place_nuclei,
    rotate,
    smooth_noise,
    soft_inside,
    stain_to_rgb,
    stroma,
)
from data.pcam import H5_KEYS, KAGGLE_IMAGES, KAGGLE_LABELS, KAGGLE_SUFFIX, PATCH_SIZE, PCAM_SPLITS, h5_path

TUMOUR_DENSITY = (32.0, 48.0)
NORMAL_DENSITY = (3.0, 7.0)


def draw_tumour_nucleus(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A tumour nucleus: large, dark, hyperchromatic, with an irregular (notched, lumpy) outline."""
    a = rng.uniform(4.5, 7.5)
    b = a * rng.uniform(0.6, 0.95)
    yy, xx = local_grid(int(np.ceil(a)) + 3, tuple(rng.uniform(-0.5, 0.5, 2)))
    along, across = rotate(yy, xx, rng.uniform(0, np.pi))
    r = np.sqrt((along / a) ** 2 + (across / b) ** 2)
    ragged = (r - 1.0) * b + 0.9 * smooth_noise(rng, yy.shape, 1.5)
    alpha = soft_inside(ragged, 0.5)
    clumps = np.clip(smooth_noise(rng, yy.shape, 1.0), -2.0, 2.0)
    h = rng.uniform(1.4, 2.0) * (0.85 + 0.15 * clumps)
    return alpha, h.astype(np.float32), 0.1


def render_pcam_patch(rng: np.random.Generator, label: int, size: int = PATCH_SIZE) -> np.ndarray:
    """One H&E-like uint8 size x size x 3 patch: tumour (1) packed with dark irregular nuclei, else (0)
    stroma with a few pale nuclei."""
    hematoxylin, eosin, gaps = stroma(rng, size, size)
    canvas = Canvas(hematoxylin + (0.08 if label else 0.0), eosin)
    tissue = 1.0 - gaps
    if label:
        centres = place_nuclei(rng, tissue, rng.uniform(*TUMOUR_DENSITY), np.zeros((0, 2), np.int64))
        draw: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, float]] = draw_tumour_nucleus
    else:
        centres = place_nuclei(rng, tissue, rng.uniform(*NORMAL_DENSITY), np.zeros((0, 2), np.int64))
        draw = draw_nucleus
    for cy, cx in centres:
        alpha, h, e = draw(rng)
        canvas.paint(int(cy), int(cx), alpha, h, e)
    return stain_to_rgb(rng, canvas)


def fake_patches(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (n, 96, 96, 3) patches, int labels (n,)): half of each class (one more 0 for odd n), shuffled."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"n: expected a positive number of patches, got {n!r}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    patches = np.stack([render_pcam_patch(rng, int(label)) for label in labels])
    return patches, labels


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise DataError(f"{existing[0]} already exists; choose an empty folder for the fake PatchCamelyon set")


def make_fake_pcam_h5(
    root: str | Path, n: int = 16, seed: int = 0, splits: Sequence[str] = PCAM_SPLITS
) -> Path:
    """Write `n` painted patches per split as the h5 release's x and y files in `root`; returns `root`."""
    root = Path(root)
    targets = [h5_path(root, split, kind) for split in splits for kind in ("x", "y")]
    _refuse_existing(targets)
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        patches, labels = fake_patches(n, seed * len(PCAM_SPLITS) + PCAM_SPLITS.index(split))

        def write_x(path: Path, patches: np.ndarray = patches) -> None:
            with h5py.File(path, "w") as handle:
                handle.create_dataset(H5_KEYS["x"], data=patches, chunks=(1, *patches.shape[1:]))

        def write_y(path: Path, labels: np.ndarray = labels) -> None:
            with h5py.File(path, "w") as handle:
                handle.create_dataset(H5_KEYS["y"], data=labels.astype(np.uint8).reshape(-1, 1, 1, 1))

        _write_atomically(h5_path(root, split, "x"), write_x)
        _write_atomically(h5_path(root, split, "y"), write_y)
    return root


def make_fake_pcam_kaggle(root: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Write `n` painted patches as `root/train/{id}.tif` with `root/train_labels.csv`; returns `root`."""
    root = Path(root)
    image_dir, labels_path = root / KAGGLE_IMAGES, root / KAGGLE_LABELS
    _refuse_existing([image_dir, labels_path])
    patches, labels = fake_patches(n, seed)
    id_rng = np.random.default_rng([seed, 1])
    ids = [id_rng.bytes(20).hex() for _ in range(n)]
    image_dir.mkdir(parents=True)
    for patch_id, patch in zip(ids, patches):
        _write_atomically(
            image_dir / (patch_id + KAGGLE_SUFFIX),
            lambda path, patch=patch: tifffile.imwrite(path, patch, photometric="rgb"),
        )

    def write_labels(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label"])
            writer.writerows(zip(ids, labels.tolist()))

    _write_atomically(labels_path, write_labels)
    return root
