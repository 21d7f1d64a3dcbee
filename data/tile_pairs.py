"""Segmentation tile pairs: folders of `images/<stem>.png` (RGB) and `masks/<stem>.png` (one class index per
pixel, 0 = background), matched by file stem, or flat folders of `img_<n>.png` + `seg_<n>.png` (what styled
generation writes).

Slides: when every stem of a folder has the form `<slide>_<rest>`, a tile's slide is the text before the first
underscore; otherwise each tile is its own slide. Train / validation splits hold out whole slides, and per-slide
metrics group tiles by this name.

Several folders mix at fixed shares of every batch (`MixedTilePairs`, e.g. 20 % synthetic and 80 % real tiles).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from skimage.color import hed2rgb, rgb2hed

from data.annotations import DataError
from data.base import SeededDataset
from data.mixing import mixed_count
from data.monuseg import BINARY_MASK_DIRS, binary_mask_folder, read_binary_mask
from data.splits import split_by_group

IMAGE_SUFFIXES = (".png",)
# Generated tiles (and the original STEDM's synthetic sets) lie flat: img_<n>.png with its mask seg_<n>.png.
FLAT_IMAGE, FLAT_MASK = "img_", "seg_"
# HED stain jitter: each channel h -> alpha * h + beta, alpha in [1 - S, 1 + S], beta in [-B, B].
STAIN_SCALE = 0.05
STAIN_SHIFT = 0.01


@dataclass(frozen=True)
class TilePair:
    """One tile: its image and mask files, its slide and the folder it came from."""

    name: str
    image: Path
    mask: Path
    slide: str
    source: str


def slide_names(stems: Sequence[str]) -> dict[str, str]:
    """stem -> slide: the prefix before the first '_' when every stem has one, else the stem itself."""
    prefixed = bool(stems) and all("_" in s.strip("_") and not s.startswith("_") for s in stems)
    return {s: s.split("_", 1)[0] if prefixed else s for s in stems}


def mask_folder(folder: Path) -> Path | None:
    """The mask folder of a tile folder: masks/ (class indices), else labels/ or bin_masks/ (0/255), else None."""
    return folder / "masks" if (folder / "masks").is_dir() else binary_mask_folder(folder)


def flat_pairs(folder: Path) -> list[TilePair]:
    """The img_<n>.png + seg_<n>.png pairs of a flat folder (generated tiles), each tile its own slide."""
    images = {p.name[len(FLAT_IMAGE):-4]: p for p in sorted(folder.glob(f"{FLAT_IMAGE}*.png"))}
    missing = [n for n in images if not (folder / f"{FLAT_MASK}{n}.png").is_file()]
    if missing:
        raise DataError(f"{images[missing[0]]}: no mask {folder / (FLAT_MASK + missing[0] + '.png')}")
    return [TilePair(n, images[n], folder / f"{FLAT_MASK}{n}.png", n, folder.name) for n in images]


def list_pairs(folder: str | Path) -> list[TilePair]:
    """Every image of `folder`/images with its mask in `folder`/masks (class indices) or, without masks/, in
    labels/ or bin_masks/ (binary 0/255 nucleus masks, read as classes 0/1), sorted by stem; or, in a flat
    folder, every img_<n>.png with its seg_<n>.png (generated tiles). DataError naming what is missing."""
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", mask_folder(folder)
    if not images_dir.is_dir() and folder.is_dir() and any(folder.glob(f"{FLAT_IMAGE}*.png")):
        return flat_pairs(folder)
    if not images_dir.is_dir() or masks_dir is None:
        missing = images_dir if not images_dir.is_dir() else folder / "masks"
        raise DataError(f"{folder}: expected a tile folder with images/*.png and masks/*.png (class indices) or "
                        f"labels/*.png or bin_masks/*.png (0/255 nucleus masks) ({missing} is missing)")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"{images_dir}: no .png tiles")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(f"{images[missing[0]]}: no mask {masks_dir / (missing[0] + '.png')}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    slides = slide_names(sorted(images))
    return [TilePair(s, images[s], masks[s], slides[s], folder.name) for s in sorted(images)]


def read_image(path: Path) -> np.ndarray:
    """uint8 H x W x 3 (an alpha channel is dropped; grey is repeated)."""
    try:
        with Image.open(path) as handle:
            image = np.asarray(handle.convert("RGB") if handle.mode not in ("RGB", "RGBA") else handle)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from None
    return np.ascontiguousarray(image[..., :3])


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """int64 H x W class indices in [0, num_classes); a mask in labels/ or bin_masks/ is binary (non-zero = class 1)."""
    if path.parent.name in BINARY_MASK_DIRS:
        return read_binary_mask(path).astype(np.int64)
    try:
        with Image.open(path) as handle:
            mask = np.asarray(handle)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the mask ({err})") from None
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{path}: expected a single-channel integer mask of class indices, got {mask.dtype} with shape {mask.shape}")
    if mask.size and int(mask.max()) >= num_classes:
        raise DataError(f"{path}: mask holds class {int(mask.max())} but --seg_classes is {num_classes} (classes 0..{num_classes - 1})")
    return mask.astype(np.int64)


def read_pair(pair: TilePair, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    image, mask = read_image(pair.image), read_mask(pair.mask, num_classes)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{pair.mask}: mask is {mask.shape[0]}x{mask.shape[1]} px but image {pair.image} is {image.shape[0]}x{image.shape[1]} px")
    return image, mask


def tile_size_of(pairs: Sequence[TilePair]) -> int:
    """The common square size of the tiles, from the file headers (DataError naming the first image or mask that
    differs)."""
    size = None
    for pair in pairs:
        with Image.open(pair.image) as handle:
            width, height = handle.size
        if width != height or (size is not None and width != size):
            raise DataError(f"{pair.image}: tile is {width}x{height} px; the tiles must be square and of one size ({size or width} px)")
        with Image.open(pair.mask) as handle:
            mask_size = handle.size
        if mask_size != (width, height):
            raise DataError(f"{pair.mask}: mask is {mask_size[1]}x{mask_size[0]} px but image {pair.image} is {height}x{width} px")
        size = width
    if size is None:
        raise DataError("no tiles")
    return size


def stain_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB with its haematoxylin, eosin and DAB channels scaled and shifted (scikit-image's HED)."""
    hed = rgb2hed(image)
    alpha = rng.uniform(1 - STAIN_SCALE, 1 + STAIN_SCALE, size=3)
    beta = rng.uniform(-STAIN_SHIFT, STAIN_SHIFT, size=3)
    rgb = hed2rgb(hed * alpha + beta)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def one_hot(mask: np.ndarray, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(np.ascontiguousarray(mask)), num_classes).permute(2, 0, 1).float()


class TilePairs(SeededDataset):
    """Tiles with their masks: `image` float32 3 x H x W in [-1, 1], `semantic` the one-hot mask (K x H x W),
    `meta` the tile name, slide and source folder. Sample i is a pure function of (seed, i): seeded rotations
    and flips with `augment`, seeded HED stain jitter with `stain_augment`; indices past the end wrap around."""

    def __init__(self, pairs: Sequence[TilePair], num_classes: int, augment: bool = False, stain_augment: bool = False, seed: int = 0):
        if not pairs:
            raise DataError("no tile pairs")
        self.pairs = list(pairs)
        self.num_classes = num_classes
        super().__init__(augment, seed)
        self.stain_augment = stain_augment

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[self.wrap(index)]
        image, mask = read_pair(pair, self.num_classes)
        if self.stain_augment:
            image = stain_jitter(image, self.sample_rng(index, 2))
        k = self.dihedral_k(index)
        if k:
            stacked = self.oriented(np.concatenate([image, mask[..., None].astype(np.uint8)], axis=2), index)
            image, mask = stacked[..., :3], stacked[..., 3].astype(np.int64)
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        return {"image": x, "semantic": one_hot(mask, self.num_classes),
                "meta": {"name": pair.name, "slide": pair.slide, "source": pair.source}}


def split_pairs(pairs: Sequence[TilePair], val_fraction: float, seed: int) -> tuple[list[TilePair], list[TilePair]]:
    """(train, validation): round(val_fraction * slides) whole slides of a folder are held out (seeded)."""
    return split_by_group(pairs, val_fraction, seed, group=lambda p: p.slide)


def batch_counts(ratios: Sequence[float], batch_size: int, rng: np.random.Generator) -> list[int]:
    """How many of a batch come from each source: source i takes mixed_count of its share of what is left
    (stick-breaking), the last source the rest, so each expected share is exactly its ratio."""
    counts, left, share_left = [], batch_size, 1.0
    for ratio in ratios[:-1]:
        n = mixed_count(min(ratio / share_left, 1.0), left, rng) if share_left > 0 and left > 0 else 0
        counts.append(n)
        left -= n
        share_left -= ratio
    return counts + [left]


class MixedTilePairs(SeededDataset):
    """Endless training stream over several TilePairs: every batch of `batch_size` consecutive indices holds
    `batch_counts(ratios)` tiles of each source, at seeded positions; the tile of a source is drawn uniformly."""

    def __init__(self, sources: Sequence[TilePairs], ratios: Sequence[float], batch_size: int, seed: int = 0):
        self.sources = list(sources)
        self.ratios = [float(r) for r in ratios]
        self.batch_size = batch_size
        super().__init__(seed=seed)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def source_of_slot(self, index: int) -> int:
        """Which source stream position `index` takes (decided per batch)."""
        batch, pos = divmod(index, self.batch_size)
        rng = np.random.default_rng([self.seed, batch, 0])
        counts = batch_counts(self.ratios, self.batch_size, rng)
        slots = np.repeat(np.arange(len(counts)), counts)[rng.permutation(self.batch_size)]
        return int(slots[pos])

    def __getitem__(self, index: int) -> dict:
        source = self.sources[self.source_of_slot(index)]
        item = int(self.sample_rng(index, 1).integers(len(source)))
        sample = source[item + len(source) * index]
        return sample


def write_demo_tile_pairs(root: str | Path, slides: int = 4, tiles_per_slide: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A small tile-pair folder for demos and tests: pink tissue with purple nuclei (class 1), named <slide>_<i>.png."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for s in range(slides):
        for t in range(tiles_per_slide):
            mask = np.zeros((size, size), np.uint8)
            for _ in range(int(rng.integers(1, 4))):
                cy, cx, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(2, max(3, size // 6)))]
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
            image = np.where(mask[..., None] == 1, (90, 40, 140), (235, 170, 200)).astype(float)
            image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
            name = f"slide{s}_{t:03d}.png"
            Image.fromarray(image).save(root / "images" / name)
            Image.fromarray(mask).save(root / "masks" / name)
    return root
