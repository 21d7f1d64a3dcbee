"""Oxford-102 flowers as a source for style-extracting diffusion: image, flower / background layout and style crops.

The layout of a root (as the Visual Geometry Group distributes the set):
- `imgs/image_00001.jpg ...`: RGB photographs;
- `segs/segmim_00001.jpg ...`: their segmentations, the flower in its colours on a pure blue (0, 0, 254)
  background. JPEG noise blurs the blue, so a pixel is background when B > 200, R < 60 and G < 60
  (BACKGROUND_BLUE_MIN, BACKGROUND_RG_MAX); everything else is flower;
- `imagelabels.mat`: `labels` (1 x N), the flower class 1..102 of image i (1-based);
- `setid.mat`: `trnid`, `valid`, `tstid`, the 1-based image ids of the splits "train", "validation" and
  "heldout".

A unit is one image (`image_00001`); its class (`class_077`) groups the units for `--labelled_per_class`.
Images are resized to a shorter side of `tile_size` (bilinear; the layout nearest) and centre-cropped. Each
sample is

- `image`: float32 3 x S x S in [-1, 1];
- `semantic`: float32 2 x S x S, the one-hot layout (0 background, 1 flower);
- `style`: float32 n x 3 x S x S in [-1, 1], reference crops of a style mode:
  `multi_patch`: one random S x S crop each of n other images of the same flower class and split (resized to a
  shorter side of `style_scale` x S); `nearby`: n random crops of the same image at `nearby_scale` x S;
  `augmented`: `data.style_sampling.augmented_crops` of the content image;
- `meta`: the unit as `slide`, and x = y = 0 (images have no position).

Image and segmentation sizes are checked when a unit is read. `write_fake_flowers` writes a tiny set in this
layout for tests and demos.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from scipy.io import loadmat, savemat
from scipy.io.matlab import MatReadError

from data.annotations import DataError
from data.base import SeededDataset
from data.splits import pick_labelled
from data.style_sampling import STYLE_MODES, augmented_crops, to_style_array

BACKGROUND_BLUE_MIN = 200
BACKGROUND_RG_MAX = 60
SPLIT_KEYS = {"trnid": "train", "valid": "validation", "tstid": "heldout"}
SPLITS = ("train", "validation", "heldout", "all")
NUM_CLASSES = 2
STYLE_SCALE = 1.25
NEARBY_SCALE = 2.0
EXPECTED = "an Oxford-102 flowers folder (imgs/, segs/, imagelabels.mat, setid.mat)"
MAT_ERRORS = (MatReadError, OSError, ValueError, IndexError, KeyError, TypeError, NotImplementedError)


def unit_name(image_id: int) -> str:
    """The unit of 1-based image id `image_id`: image_00001."""
    return f"image_{image_id:05d}"


@dataclass(frozen=True)
class FlowerSet:
    """The images of a flowers root: unit -> flower class and unit -> split, in image id order."""

    root: Path
    classes: dict[str, str]
    splits: dict[str, str]

    def names(self, split: str = "all") -> list[str]:
        """Units of a split ("train", "validation", "heldout" or "all")."""
        return [name for name, s in self.splits.items() if split == "all" or s == split]

    def image_path(self, unit: str) -> Path:
        """imgs/<unit>.jpg."""
        return self.root / "imgs" / f"{unit}.jpg"

    def seg_path(self, unit: str) -> Path:
        """segs/segmim_<id>.jpg."""
        return self.root / "segs" / f"segmim_{unit.split('_', 1)[1]}.jpg"


def read_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The flattened arrays `keys` of a MATLAB file (DataError naming the file when missing or unreadable)."""
    if not path.is_file():
        raise DataError(f"{path} is missing: expected a MATLAB file with {list(keys)} in {EXPECTED}")
    try:
        content = loadmat(str(path))
    except MAT_ERRORS as err:
        raise DataError(f"{path}: cannot read the MATLAB file ({str(err) or type(err).__name__})") from None
    missing = [key for key in keys if key not in content]
    if missing:
        found = sorted(key for key in content if not key.startswith("__"))
        raise DataError(f"{path}: expected the key(s) {missing}, found {found}")
    return {key: np.asarray(content[key]).ravel() for key in keys}


def read_splits(path: Path, count: int) -> dict[str, str]:
    """unit -> split of setid.mat, in image id order; ids must name images 1..count."""
    ids = read_mat(path, list(SPLIT_KEYS))
    splits: dict[int, str] = {}
    for key, split in SPLIT_KEYS.items():
        for value in ids[key]:
            image_id = int(value)
            if not 1 <= image_id <= count:
                raise DataError(f"{path}: {key} names image {image_id} but imagelabels.mat labels images 1..{count}")
            splits.setdefault(image_id, split)
    return {unit_name(i): splits[i] for i in sorted(splits)}


def check_files(flowers: FlowerSet) -> None:
    """DataError naming the first image of setid.mat without its file or its segmentation."""
    for unit in flowers.names():
        image, seg = flowers.image_path(unit), flowers.seg_path(unit)
        if not image.is_file():
            raise DataError(f"{image} is missing: setid.mat names image {unit}")
        if not seg.is_file():
            raise DataError(f"{image}: no segmentation {seg}")


def open_flowers(root: str | Path) -> FlowerSet:
    """Read the labels and splits of a flowers root and check that every image has its segmentation."""
    root = Path(root)
    for sub in ("imgs", "segs"):
        if not (root / sub).is_dir():
            raise DataError(f"{root}: expected {EXPECTED}; {root / sub} is missing")
    labels = read_mat(root / "imagelabels.mat", ["labels"])["labels"]
    splits = read_splits(root / "setid.mat", len(labels))
    classes = {unit: f"class_{int(labels[int(unit.split('_')[1]) - 1]):03d}" for unit in splits}
    flowers = FlowerSet(root, classes, splits)
    check_files(flowers)
    return flowers


def read_rgb(path: Path) -> Image.Image:
    """The image at `path` as RGB (DataError naming the file when it cannot be read)."""
    try:
        with Image.open(path) as handle:
            return handle.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from None


def foreground(seg: np.ndarray) -> np.ndarray:
    """Flower pixels of a segmentation image (uint8 H x W x 3): all but blue (B > 200, R < 60, G < 60)."""
    r, g, b = (np.asarray(seg)[..., c].astype(np.int16) for c in range(3))
    return ~((b > BACKGROUND_BLUE_MIN) & (r < BACKGROUND_RG_MAX) & (g < BACKGROUND_RG_MAX))


def read_flower(flowers: FlowerSet, unit: str) -> tuple[Image.Image, Image.Image]:
    """The full-size image (RGB) and label mask (mode L, 0 background, 1 flower) of `unit`."""
    image_path, seg_path = flowers.image_path(unit), flowers.seg_path(unit)
    image, seg = read_rgb(image_path), read_rgb(seg_path)
    if image.size != seg.size:
        raise DataError(
            f"{seg_path}: segmentation is {seg.width}x{seg.height} px but image {image_path} is "
            f"{image.width}x{image.height} px; expected the same size"
        )
    return image, Image.fromarray(foreground(np.asarray(seg)).astype(np.uint8))


def resize_short(image: Image.Image, short: int, resample: Image.Resampling) -> Image.Image:
    """`image` scaled so that its shorter side is `short` px."""
    scale = short / min(image.size)
    width, height = (max(short, round(side * scale)) for side in image.size)
    return image.resize((width, height), resample)


def centre_crop(image: Image.Image, size: int) -> np.ndarray:
    """The central size x size pixels of `image` as an array."""
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def random_crops(image: Image.Image, short: int, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 count x size x size x 3 random crops of `image` resized (bilinear) to a shorter side of `short`."""
    scaled = np.asarray(resize_short(image, short, Image.Resampling.BILINEAR))
    height, width = scaled.shape[:2]
    crops = np.zeros((count, size, size, 3), np.uint8)
    for i in range(count):
        y, x = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
        crops[i] = scaled[y:y + size, x:x + size]
    return crops


def check_options(style_mode: str, split: str, labelled_per_class: int | None, scales: Sequence[float]) -> None:
    """DataError for an unknown style mode or split, a labelled count below 1 or a crop scale below 1."""
    if style_mode not in STYLE_MODES:
        raise DataError(f"--style_sampling: expected one of {list(STYLE_MODES)}, got {style_mode!r}")
    if split not in SPLITS:
        raise DataError(f"flowers split: expected one of {list(SPLITS)}, got {split!r}")
    if labelled_per_class is not None and labelled_per_class < 1:
        raise DataError(f"--labelled_per_class: expected at least 1, got {labelled_per_class}")
    if min(scales) < 1.0:
        raise DataError(f"flowers style crops: expected crop scales >= 1, got {list(scales)}")


class Flowers(SeededDataset):
    """The labelled images of a split with their flower layout and style crops (items: image units)."""

    num_classes = NUM_CLASSES

    def __init__(
        self,
        flowers: FlowerSet,
        split: str = "train",
        tile_size: int = 64,
        num_style: int = 4,
        style_mode: str = "multi_patch",
        labelled_per_class: int | None = None,
        augment: bool = False,
        seed: int = 0,
        style_scale: float = STYLE_SCALE,
        nearby_scale: float = NEARBY_SCALE,
    ) -> None:
        check_options(style_mode, split, labelled_per_class, (style_scale, nearby_scale))
        sources = flowers.names(split)
        if not sources:
            raise DataError(f"{flowers.root / 'setid.mat'}: no image of split {split!r}")
        kept = pick_labelled({unit: flowers.classes[unit] for unit in sources}, labelled_per_class, seed)
        self.flowers = flowers
        self.split = split
        self.sources = sources
        self.units = [unit for unit in sources if unit in kept]
        self.tile_size = tile_size
        self.num_style = num_style
        self.style_mode = style_mode
        super().__init__(augment, seed)
        self.style_scale = style_scale
        self.nearby_scale = nearby_scale
        self.pools: dict[tuple[str, str], list[str]] = {}
        for unit in flowers.names():
            self.pools.setdefault((flowers.splits[unit], flowers.classes[unit]), []).append(unit)

    def __len__(self) -> int:
        return len(self.units)

    def unit_of(self, index: int) -> str:
        """The image unit of item `index`."""
        return self.units[self.wrap(index)]

    def style_units(self, split: str | None = None) -> list[str]:
        """Every image of a split ("train", "validation", "heldout" or "all"; default this set's), labelled or not."""
        return list(self.sources) if split is None else self.flowers.names(split)

    def check_unit(self, unit: str) -> None:
        """DataError unless `unit` is an image of the set (of any split)."""
        if unit not in self.flowers.splits:
            raise DataError(f"{self.flowers.root}: setid.mat names no image {unit!r}")

    def same_class(self, unit: str) -> list[str]:
        """The other images of `unit`'s class and split (`unit` itself when it is the only one)."""
        self.check_unit(unit)
        pool = self.pools[(self.flowers.splits[unit], self.flowers.classes[unit])]
        return [other for other in pool if other != unit] or [unit]

    def style_sources(self, unit: str, count: int, rng: np.random.Generator) -> list[str]:
        """The `count` images multi_patch crops of `unit` come from (without repeats while the class has enough)."""
        pool = self.same_class(unit)
        picks = rng.choice(len(pool), size=count, replace=len(pool) < count)
        return [pool[int(i)] for i in picks]

    def content(self, unit: str) -> np.ndarray:
        """The unaugmented uint8 S x S x 3 image of `unit`."""
        image, _ = read_flower(self.flowers, unit)
        return centre_crop(resize_short(image, self.tile_size, Image.Resampling.BILINEAR), self.tile_size)

    def crops(self, unit: str, mode: str, count: int, rng: np.random.Generator, content: np.ndarray | None) -> np.ndarray:
        """uint8 count x S x S x 3 crops of style mode `mode` for content image `unit`."""
        size = self.tile_size
        self.check_unit(unit)
        if mode not in STYLE_MODES:
            raise DataError(f"--style_sampling: expected one of {list(STYLE_MODES)}, got {mode!r}")
        if mode == "none" or count == 0:
            return np.zeros((0, size, size, 3), np.uint8)
        if mode == "multi_patch":
            short = round(size * self.style_scale)
            sources = self.style_sources(unit, count, rng)
            return np.concatenate([random_crops(read_flower(self.flowers, s)[0], short, size, 1, rng) for s in sources])
        if mode == "nearby":
            return random_crops(read_flower(self.flowers, unit)[0], round(size * self.nearby_scale), size, count, rng)
        return augmented_crops(self.content(unit) if content is None else content, count, rng).images

    def style_crops(self, unit: str, rng: np.random.Generator, count: int | None = None, mode: str | None = None,
                    content: np.ndarray | None = None) -> np.ndarray:
        """float32 n x 3 x S x S style crops for image `unit` in [-1, 1] (default: this set's mode and n)."""
        count = self.num_style if count is None else count
        return to_style_array(self.crops(unit, mode or self.style_mode, count, rng, content))

    def layout(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The unaugmented image (uint8 S x S x 3) and label mask (uint8 S x S) of item `index`."""
        image, labels = read_flower(self.flowers, self.unit_of(index))
        size = self.tile_size
        return (centre_crop(resize_short(image, size, Image.Resampling.BILINEAR), size),
                centre_crop(resize_short(labels, size, Image.Resampling.NEAREST), size))

    def __getitem__(self, index: int) -> dict[str, Any]:
        unit = self.unit_of(index)
        patch, labels = self.layout(index)
        style = self.style_crops(unit, self.sample_rng(index, 1), content=patch)
        return self.styled_sample(index, patch, labels, style, {"slide": unit, "x": 0, "y": 0})


FAKE_COLOURS = ((220, 30, 30), (235, 215, 40), (150, 70, 235), (245, 245, 245), (240, 130, 20), (230, 90, 170))
FAKE_GREEN = (60, 140, 50)
SEG_BLUE = (0, 0, 254)


def fake_flower(colour: Sequence[int], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image (a petalled blob of `colour` on green, shorter side `size`) and its boolean flower mask."""
    height, width = size, size + int(rng.integers(0, size // 2 + 1))
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    cy, cx = height / 2 + rng.uniform(-0.1, 0.1) * height, width / 2 + rng.uniform(-0.1, 0.1) * width
    radius = rng.uniform(0.28, 0.38) * size
    angle = np.arctan2(yy - cy, xx - cx)
    petals = radius * (1.0 + 0.2 * np.cos(int(rng.integers(5, 8)) * angle + rng.uniform(0, np.pi)))
    mask = np.hypot(yy - cy, xx - cx) <= petals
    image = np.where(mask[..., None], colour, FAKE_GREEN).astype(np.float64)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_fake_flowers(root: str | Path, classes: int = 3, per_class: int = 4, size: int = 48, seed: int = 0) -> Path:
    """A tiny flowers root in the Oxford-102 layout: image i of class c is a blob of FAKE_COLOURS[c] on green.

    Images of a class go to train, train, validation, heldout, train, train, ... (position modulo 4).
    """
    root = Path(root)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "segs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels: list[int] = []
    ids: dict[str, list[int]] = {key: [] for key in SPLIT_KEYS}
    for c in range(classes):
        for i in range(per_class):
            image, mask = fake_flower(FAKE_COLOURS[c % len(FAKE_COLOURS)], size, rng)
            labels.append(c + 1)
            image_id = len(labels)
            seg = np.where(mask[..., None], image, SEG_BLUE).astype(np.uint8)
            Image.fromarray(image).save(root / "imgs" / f"{unit_name(image_id)}.jpg", quality=92)
            Image.fromarray(seg).save(root / "segs" / f"segmim_{image_id:05d}.jpg", quality=92)
            ids[("trnid", "trnid", "valid", "tstid")[i % 4]].append(image_id)
    savemat(str(root / "imagelabels.mat"), {"labels": np.array([labels], np.uint8)})
    savemat(str(root / "setid.mat"), {key: np.array([values], np.uint16) for key, values in ids.items()})
    return root
